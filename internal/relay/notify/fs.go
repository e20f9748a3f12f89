package notify

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/postgate/postgate/internal/relay/queue"
)

// journalFS is the journal's view of Options.Dir: one directory per sender
// domain, each a queue.FS, so that the journal relies on the same
// durability contract as the mail queue (a file's content is durable once
// synced, a name once its directory is) and a test can simulate a power
// loss with the queue's crash filesystem (internal/relay/queue/queuetest).
type journalFS interface {
	// Queues lists the names of the queue directories.
	Queues() ([]string, error)
	// Queue opens the directory of one queue, creating it durably when it
	// is missing.
	Queue(name string) (queue.FS, error)
}

// dirJournal is the journalFS of a real directory.
type dirJournal struct{ dir string }

func (d dirJournal) Queues() ([]string, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Queue opens Dir/name with queue.OpenDir: its names resolve inside it
// only, and a new directory is synced into its parent, so that segments
// synced into it survive a power loss.
func (d dirJournal) Queue(name string) (queue.FS, error) {
	if !validName(name) {
		return nil, fmt.Errorf("invalid queue name %q", name)
	}
	return queue.OpenDir(filepath.Join(d.dir, name))
}

// truncater is implemented by files that can be cut (*os.File).
type truncater interface{ Truncate(size int64) error }
