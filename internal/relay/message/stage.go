package message

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// stage holds the body of a message being signed: the first max bytes in
// memory, the rest in a temporary file in dir. The file is unlinked right
// after it is created (on Linux an open file needs no name), so it takes no
// cleanup after a crash; where unlinking an open file fails, close removes
// it.
type stage struct {
	dir  string
	max  int64
	mem  bytes.Buffer
	f    *os.File
	name string // set while the file still has its name
}

func (s *stage) Write(p []byte) (int, error) {
	if s.f == nil {
		if int64(s.mem.Len()+len(p)) <= s.max {
			return s.mem.Write(p)
		}
		f, err := os.CreateTemp(s.dir, "postgate-stage-*")
		if err != nil {
			return 0, fmt.Errorf("staging the message: %w", err)
		}
		s.f = f
		if os.Remove(f.Name()) != nil {
			s.name = f.Name()
		}
	}
	n, err := s.f.Write(p)
	if err != nil {
		err = fmt.Errorf("staging the message: %w", err)
	}
	return n, err
}

// reader returns what was written, from the start.
func (s *stage) reader() (io.Reader, error) {
	if s.f == nil {
		return bytes.NewReader(s.mem.Bytes()), nil
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("staging the message: %w", err)
	}
	return io.MultiReader(bytes.NewReader(s.mem.Bytes()), s.f), nil
}

func (s *stage) close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	if s.name != "" {
		if rerr := os.Remove(s.name); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	s.f, s.name = nil, ""
	return err
}
