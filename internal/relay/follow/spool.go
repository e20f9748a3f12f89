package follow

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/postgate/postgate/internal/relay/atomicfile"
	"github.com/postgate/postgate/internal/routing"
)

// spoolFile is the last good table in the spool directory: the index and the
// data of every shard it names, in one file, so that one rename replaces it
// whole.
const spoolFile = "routing-table.json"

// spooled is the content of spoolFile.
type spooled struct {
	Index  *routing.Index    `json:"index"`
	Shards map[string][]byte `json:"shards"`
	// Shaping is the shaping policy published with the table
	// (routing.ShapingDataKey), nil when none.
	Shaping []byte `json:"shaping,omitempty"`
}

// saveSpool writes the table atomically: a temporary file in the same
// directory, fsync, rename over the old one, fsync of the directory, so that a
// crash leaves either the old table or the new one.
func saveSpool(dir string, s *spooled) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(dir, spoolFile, data)
}

// loadSpool reads the last good table; it returns nil, nil when there is none.
func loadSpool(dir string) (*spooled, error) {
	data, err := os.ReadFile(filepath.Join(dir, spoolFile)) //nolint:gosec // the spool directory is the relay's own configuration
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s spooled
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", spoolFile, err)
	}
	if s.Index == nil {
		return nil, fmt.Errorf("%s: no index", spoolFile)
	}
	return &s, nil
}
