// Package crash is the no-loss harness of the relay: real postgate relay
// processes under load, killed with SIGKILL at random moments and restarted
// on the same spool, and a spool on a filesystem that fills up. `make test`
// runs a short version; `make crash` the full one (POSTGATE_CRASH_KILLS).
//
// kill -9 keeps the page cache, so these tests prove the relay's protocol
// (no 250 before the queue says the message is stored; recovery on
// restart), not fsync ordering: internal/relay/queue's crash tests drop what was not
// fsynced (queuetest) for that.
package crash

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postgate/postgate/hack/internal/load"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

const sinkHost = "sink.crash.test"

// relay is a postgate relay process that the test starts, kills and
// restarts on the same spool and address.
type relay struct {
	t       *testing.T
	bin     string
	args    []string
	addr    string
	log     *os.File
	cmd     *exec.Cmd
	exited  chan struct{}
	started int
}

// newRelay builds the postgate binary and configures a relay that routes
// bench.example.com's mail to the sink.
func newRelay(t *testing.T, spool string, sink *testenv.SMTPSink, dns *testenv.DNSServer) *relay {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "postgate")
	build := exec.Command("go", "build", "-o", bin, "./cmd/postgate")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	manifests := filepath.Join(dir, "manifests")
	if err := os.MkdirAll(manifests, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(manifests, "relay.yaml"), []byte(load.RelayManifests(sinkHost, sink.Port())), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	logf, err := os.Create(filepath.Join(dir, "relay.log"))
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, bin: bin, addr: addr, log: logf, args: []string{"relay", "--manifests", manifests,
		"--spool-dir", spool, "--smtp-bind-address", addr, "--dns-server", dns.Addr(),
		"--admin-bind-address", "", "--hostname", "crash.test", "--shutdown-grace", "5s"}}
	t.Cleanup(func() {
		r.stop()
		_ = logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logf.Name())
			t.Logf("relay log (last 4 KB):\n%s", tail(data, 4096))
		}
	})
	return r
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// start runs the relay and waits until it greets.
func (r *relay) start() {
	r.t.Helper()
	r.started++
	fmt.Fprintf(r.log, "--- start %d\n", r.started)
	r.cmd = exec.Command(r.bin, r.args...)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	exited := make(chan struct{})
	r.exited = exited
	cmd := r.cmd
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(testenv.WaitTimeout)
	for {
		if err := greets(r.addr); err == nil {
			return
		} else if time.Now().After(deadline) {
			r.t.Fatalf("relay start %d: not greeting after %s: %v", r.started, testenv.WaitTimeout, err)
		}
		select {
		case <-exited:
			r.t.Fatalf("relay start %d exited: %v", r.started, r.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *relay) kill() {
	_ = r.cmd.Process.Kill()
	<-r.exited
	r.cmd = nil
}

// stop ends the relay with SIGTERM (SIGKILL after 15 s).
func (r *relay) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(15 * time.Second):
		r.kill()
	}
	r.cmd = nil
}

func greets(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "220") {
		return fmt.Errorf("greeting %q", strings.TrimSpace(line))
	}
	_, _ = io.WriteString(c, "QUIT\r\n")
	return nil
}

func fixtures(t *testing.T) (*testenv.SMTPSink, *testenv.DNSServer) {
	t.Helper()
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{Addr: "127.0.0.1:0"})
	sink := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.1:0"})
	if err := dns.Add(sinkHost + ". 60 IN A 127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	return sink, dns
}

// TestKillNine: under load, the relay is killed with SIGKILL at random
// moments and restarted on the same spool; every message a client saw
// acknowledged with 250 reaches the sink at least once. Duplicates (a
// delivery the sink took but the killed relay never recorded) are allowed
// and reported.
func TestKillNine(t *testing.T) {
	kills := 4
	if v := os.Getenv("POSTGATE_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("POSTGATE_CRASH_KILLS=%q: want a positive number", v)
		}
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("POSTGATE_CRASH_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("%d kills, POSTGATE_CRASH_SEED=%d", kills, seed)
	rng := rand.New(rand.NewPCG(seed, seed))

	sink, dns := fixtures(t)
	r := newRelay(t, t.TempDir(), sink, dns)
	r.start()

	var mu sync.Mutex
	acked := map[string]bool{}
	var refused, unknown int
	var changes testenv.Changes // at each acknowledged message
	ctx, cancel := context.WithCancel(context.Background())
	loaded := make(chan load.Stats, 1)
	go func() {
		loaded <- load.Run(ctx, load.Options{
			Addr: r.addr, Sessions: 8, Size: 2048, From: "crash@bench.example.com", RcptDomain: "dest.test",
			Prefix: "m", Reconnect: true,
			OnResult: func(res load.Result) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case res.Acknowledged():
					acked[res.Rcpt] = true
					changes.Changed()
				case res.Code == 0:
					unknown++ // the connection died: the client knows nothing
				default:
					refused++
				}
			},
		})
	}()
	ackedNow := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	// waitAcked waits until n more messages were acknowledged.
	waitAcked := func(n int) {
		t.Helper()
		want := ackedNow() + n
		changes.Wait(t, func() string {
			if got := ackedNow(); got < want {
				return fmt.Sprintf("%d messages acknowledged, waiting for %d", got, want)
			}
			return ""
		})
	}
	for i := range kills {
		// Random moments: while sessions are mid-transaction, mid-fsync,
		// mid-delivery. Each life lasts until some mail was acknowledged,
		// so that every kill has something to lose: the moment is counted
		// in acknowledged messages, so a slow machine still kills mid-load.
		waitAcked(1 + rng.IntN(50))
		r.kill()
		t.Logf("kill %d: %d acknowledged so far", i+1, ackedNow())
		r.start()
	}
	waitAcked(1) // the last life takes mail too
	cancel()
	st := <-loaded

	mu.Lock()
	want := slices.Sorted(func(yield func(string) bool) {
		for rcpt := range acked {
			if !yield(rcpt) {
				return
			}
		}
	})
	mu.Unlock()
	if len(want) == 0 {
		t.Fatal("no message was acknowledged")
	}
	delivered := map[string]int{}
	wait, stop := context.WithTimeout(context.Background(), 90*time.Second)
	defer stop()
	_, err := sink.WaitStats(wait, func(testenv.SinkStats) bool {
		clear(delivered)
		for _, m := range sink.Messages() {
			for _, rcpt := range m.Rcpts {
				delivered[rcpt]++
			}
		}
		for _, rcpt := range want {
			if delivered[rcpt] == 0 {
				return false
			}
		}
		return true
	})
	var missing []string
	duplicates := 0
	for _, rcpt := range want {
		if delivered[rcpt] == 0 {
			missing = append(missing, rcpt)
		}
	}
	for _, n := range delivered {
		if n > 1 {
			duplicates++
		}
	}
	t.Logf("%d kills; %d messages sent, %d acknowledged, %d refused, %d cut off by a kill (unacknowledged); %d recipients at the sink, %d of them more than once",
		kills, st.Sent, len(want), refused, unknown, len(delivered), duplicates)
	if err != nil || len(missing) > 0 {
		t.Fatalf("%d acknowledged messages never reached the sink (%v), first: %v", len(missing), err, missing[:min(len(missing), 10)])
	}
}

// TestDiskFull runs the relay on a 96 MiB tmpfs. The queue keeps 64 MiB
// free (queue.Options.MinFreeBytes): below that, MAIL is answered 452
// 4.3.1; when the filesystem fills up during DATA, the message is refused
// with a 4xx, never 250; once space returns, mail flows again and nothing
// refused is delivered.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root; internal/relay/queue's tests cover ENOSPC with queuetest's faults")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s); internal/relay/queue's tests cover ENOSPC with queuetest's faults", err, out)
	}
	// Registered first, so it runs after the relay has stopped.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	sink, dns := fixtures(t)
	r := newRelay(t, filepath.Join(mnt, "spool"), sink, dns)
	r.start()

	submit := func(to string) string {
		t.Helper()
		line, err := testenv.SubmitMail(r.addr, "", "disk@bench.example.com", to, "disk full")
		if err != nil {
			t.Fatalf("submitting to %s: %v", to, err)
		}
		return line
	}
	if line := submit("before@dest.test"); !strings.HasPrefix(line, "250") {
		t.Fatalf("with space: %q, want 250", line)
	}

	// Below the reserve: 452 4.3.1 at MAIL.
	filler := filepath.Join(mnt, "filler")
	fill(t, filler, free(t, mnt)-60<<20)
	if line := submit("low@dest.test"); !strings.HasPrefix(line, "452 4.3.1") {
		t.Errorf("with %d MiB free: %q, want 452 4.3.1", free(t, mnt)>>20, line)
	}

	// Full during DATA: MAIL passes the reserve check, then the
	// filesystem fills up before the message ends.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c := dial(t, r.addr)
	for _, cmd := range []string{"EHLO disk.test", "MAIL FROM:<disk@bench.example.com>", "RCPT TO:<full@dest.test>", "DATA"} {
		if line := c.cmd(cmd); line[0] != '2' && line[0] != '3' {
			t.Fatalf("%s: %q", cmd, line)
		}
	}
	c.write("From: <disk@bench.example.com>\r\nSubject: full\r\n\r\n" + strings.Repeat("x", 70) + "\r\n")
	fill(t, filler, -1)
	c.write(strings.Repeat(strings.Repeat("y", 70)+"\r\n", 4096))
	if line := c.cmd("."); !strings.HasPrefix(line, "4") {
		t.Errorf("a message that ran out of space: %q, want 4xx", line)
	} else {
		t.Logf("a message that ran out of space: %q", line)
	}
	c.close()

	// Space returns: mail flows again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if line := submit("after@dest.test"); !strings.HasPrefix(line, "250") {
		t.Fatalf("after space returned: %q, want 250", line)
	}
	wait, stop := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer stop()
	if _, err := sink.WaitMessages(wait, 2); err != nil {
		t.Fatal(err)
	}
	// Anything refused but queued anyway would still be in the queue, or
	// at the sink: stop the relay and look at both.
	r.stop()
	dir, err := queue.OpenDir(filepath.Join(mnt, "spool", "queue"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(context.Background(), dir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := q.Stats().Messages; n != 0 {
		t.Errorf("%d messages left in the queue after both were delivered", n)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := dir.Close(); err != nil { // the tmpfs is unmounted at the end
		t.Fatal(err)
	}
	var got []string
	for _, m := range sink.Messages() {
		got = append(got, m.Rcpts...)
	}
	slices.Sort(got)
	if want := []string{"after@dest.test", "before@dest.test"}; !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
}

// free is the space available on the filesystem of dir.
func free(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize //nolint:gosec // a tmpfs of 96 MiB
}

// fill writes n bytes to path, or until the filesystem is full when n < 0.
func fill(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	buf := make([]byte, 1<<20)
	for written := int64(0); n < 0 || written < n; {
		chunk := buf
		if n >= 0 {
			chunk = buf[:min(int64(len(buf)), n-written)]
		}
		k, err := f.Write(chunk)
		written += int64(k)
		if errors.Is(err, syscall.ENOSPC) && n < 0 {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// conn is a raw SMTP client session.
type conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	cc := &conn{t: t, c: c, r: bufio.NewReader(c)}
	if line := cc.reply(); !strings.HasPrefix(line, "220") {
		t.Fatalf("greeting %q", line)
	}
	return cc
}

func (c *conn) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

// cmd sends a command line and returns the last line of its reply.
func (c *conn) cmd(line string) string {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.reply()
}

func (c *conn) reply() string {
	c.t.Helper()
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatal(err)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimSpace(line)
		}
	}
}

func (c *conn) close() { _ = c.c.Close() }
