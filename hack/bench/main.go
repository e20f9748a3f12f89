// Command bench measures postgate relay against Postfix on loopback, side by
// side, with the same load and the same sink: `make bench` runs it. Each
// run starts a fresh smtp-sink (Postfix's test sink, counting what it
// receives), a fresh relay (postgate standalone with its fsynced spool, or
// a private Postfix instance with its default durability) that relays
// everything to that sink, drives it with the load client of package load
// for a fixed time, and waits until the sink has every acknowledged
// message. The two relays alternate run by run; the table shows medians.
// The direct rows send the same load straight to the sink: the ceiling of
// the harness on this machine.
//
// Everything listens on 127.0.0.1 and every loop is bounded.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postgate/postgate/hack/bench/load"
	"github.com/postgate/postgate/relay/testenv"
)

// config is the command line.
type config struct {
	postgate     string
	runs         int
	duration     time.Duration
	drainTimeout time.Duration
	sizes        []int
	sessions     []int
	idleSessions int
	work         string
	skipPostfix  bool
	profileRelay string
	keepWorkDir  bool
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(context.Background(), cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var sizes, sessions string
	fs.StringVar(&c.postgate, "postgate", "bin/postgate", "the postgate binary")
	fs.IntVar(&c.runs, "runs", 3, "runs of each relay per load; the table shows medians")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "how long each run sends")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 3*time.Minute, "how long a run waits for the sink to have every acknowledged message")
	fs.StringVar(&sizes, "sizes", "1024,102400", "message sizes in bytes, comma-separated")
	fs.StringVar(&sessions, "sessions", "1,20,50", "concurrent sessions, comma-separated")
	fs.IntVar(&c.idleSessions, "idle-sessions", 1000, "open idle sessions for the memory measurement (0: skip)")
	fs.StringVar(&c.work, "work-dir", "", "directory for spools and logs, on the disk to measure (default: a new directory under $TMPDIR)")
	fs.BoolVar(&c.skipPostfix, "skip-postfix", false, "measure postgate and the ceiling only")
	fs.StringVar(&c.profileRelay, "profile", "", "with perf installed: record a CPU profile (perf record -g) of postgate during the runs of this load, SIZE/SESSIONS, into the work directory")
	fs.BoolVar(&c.keepWorkDir, "keep", false, "keep the work directory (logs, profiles)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var err error
	if c.sizes, err = ints(sizes); err != nil {
		return nil, fmt.Errorf("-sizes: %w", err)
	}
	if c.sessions, err = ints(sessions); err != nil {
		return nil, fmt.Errorf("-sessions: %w", err)
	}
	if c.runs < 1 {
		return nil, errors.New("-runs must be at least 1")
	}
	return c, nil
}

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// kind is what a run measures.
type kind string

const (
	kindPostgate kind = "postgate"
	kindPostfix  kind = "Postfix"
	kindDirect   kind = "direct, load client"
	kindSource   kind = "direct, smtp-source"
)

// sample is one run's measurements.
type sample struct {
	accepted, endToEnd float64 // messages per second
	p50, p99           time.Duration
	rssMB              float64
	cpuMs              float64 // the relay's CPU time per acknowledged message
	acked              int
	complete           bool // the sink had every acknowledged message in time
}

// load is one row group of the table.
type loadKey struct{ size, sessions int }

type bench struct {
	cfg                  *config
	dns                  *testenv.DNSServer
	work                 string
	smtpSink, smtpSource string
	postfixUID           int
	seq                  int
	log                  io.Writer
	lastDirect           map[loadKey]int
}

const (
	from       = "bench@bench.example.com"
	rcptDomain = "dest.test"
	sinkHost   = "sink.bench.test"
)

func run(ctx context.Context, cfg *config, out io.Writer) error {
	work := cfg.work
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "postgate-bench-"); err != nil {
			return err
		}
		if !cfg.keepWorkDir {
			defer func() { _ = os.RemoveAll(work) }() //nolint:gosec // the directory just made
		}
	}
	// Postfix's daemons, running as the postfix user, must reach their
	// directories below it.
	if err := os.MkdirAll(work, 0o755); err != nil { //nolint:gosec // see below
		return err
	}
	if err := os.Chmod(work, 0o755); err != nil { //nolint:gosec // see above
		return err
	}
	b := &bench{cfg: cfg, work: work, log: os.Stderr, lastDirect: map[loadKey]int{}}
	var err error
	if b.cfg.postgate, err = filepath.Abs(cfg.postgate); err != nil {
		return err
	}
	if _, err := os.Stat(b.cfg.postgate); err != nil { //nolint:gosec // the binary to measure, as told

		return fmt.Errorf("the postgate binary: %w (make build)", err)
	}
	if b.smtpSink, err = lookSbin("smtp-sink"); err != nil {
		return err
	}
	if b.smtpSource, err = lookSbin("smtp-source"); err != nil {
		return err
	}
	if !cfg.skipPostfix {
		if err := b.checkPostfix(); err != nil {
			return err
		}
	}
	b.dns, err = testenv.NewDNSServer(ctx, testenv.DNSOptions{Addr: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer b.dns.Close()
	if err := b.dns.Add(sinkHost + ". 60 IN A 127.0.0.1"); err != nil {
		return err
	}

	kinds := []kind{kindPostgate, kindPostfix}
	if cfg.skipPostfix {
		kinds = kinds[:1]
	}
	results := map[loadKey]map[kind][]sample{}
	var loads []loadKey
	for _, size := range cfg.sizes {
		for _, sessions := range cfg.sessions {
			lk := loadKey{size, sessions}
			loads = append(loads, lk)
			results[lk] = map[kind][]sample{}
			for r := range cfg.runs {
				order := slices.Clone(kinds)
				if r%2 == 1 {
					slices.Reverse(order) // alternate which relay runs first
				}
				for _, k := range append(order, kindDirect, kindSource) {
					s, err := b.measure(ctx, k, lk)
					if err != nil {
						return fmt.Errorf("%s, %d bytes, %d sessions: %w", k, lk.size, lk.sessions, err)
					}
					fmt.Fprintf(b.log, "%-20s %6d B %3d sessions run %d: accepted %7.0f/s, end to end %7.0f/s, p50 %v, p99 %v, RSS %.0f MB, CPU %.2f ms/msg, %d acknowledged%s\n",
						k, lk.size, lk.sessions, r+1, s.accepted, s.endToEnd, s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond), s.rssMB, s.cpuMs, s.acked, incomplete(s))
					results[lk][k] = append(results[lk][k], s)
				}
			}
		}
	}
	printTable(out, cfg, loads, kinds, results)
	if cfg.idleSessions > 0 {
		if err := b.idle(ctx, out); err != nil {
			return fmt.Errorf("idle sessions: %w", err)
		}
	}
	return nil
}

func incomplete(s sample) string {
	if s.complete {
		return ""
	}
	return " (INCOMPLETE: the sink did not get every message in time)"
}

func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found: install Debian's postfix package (make bench does)", name)
	}
	return p, nil
}

// measure runs one load through one kind of relay (or straight to the sink).
func (b *bench) measure(ctx context.Context, k kind, lk loadKey) (sample, error) {
	b.seq++
	dir := filepath.Join(b.work, fmt.Sprintf("run-%03d", b.seq))
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // Postfix's daemons must reach their directories below
		return sample{}, err
	}
	defer func() {
		if !b.cfg.keepWorkDir {
			_ = os.RemoveAll(dir)
		}
	}()
	sink, err := b.startSink(dir)
	if err != nil {
		return sample{}, err
	}
	defer sink.stop()

	if k == kindSource {
		return b.measureSource(ctx, sink, lk)
	}
	addr := sink.addr
	var peakRSS, cpu func() float64
	switch k {
	case kindPostgate:
		pg, err := b.startPostgate(dir, sink.port)
		if err != nil {
			return sample{}, err
		}
		defer pg.stop()
		pid := pg.cmd.Process.Pid
		addr, peakRSS = pg.addr, func() float64 { return statusKB(pid, "VmHWM") / 1024 }
		cpu = func() float64 { return cpuSeconds([]int{pid}, false) }
		if b.cfg.profileRelay == fmt.Sprintf("%d/%d", lk.size, lk.sessions) {
			stopProfile := b.perf(dir, pg.cmd.Process.Pid)
			defer stopProfile()
		}
	case kindPostfix:
		pf, err := b.startPostfix(dir, sink.port)
		if err != nil {
			return sample{}, err
		}
		defer pf.stop()
		sampler := startSampler(pf.pids)
		addr, peakRSS = pf.addr, sampler.stop
		cpu = func() float64 { return cpuSeconds(pf.pids(), true) }
	}
	var cpu0 float64
	if cpu != nil {
		cpu0 = cpu()
	}
	lctx, cancel := context.WithTimeout(ctx, b.cfg.duration+2*time.Minute)
	st := load.Run(lctx, load.Options{
		Addr: addr, Sessions: lk.sessions, Size: lk.size, From: from, RcptDomain: rcptDomain,
		Prefix: fmt.Sprintf("r%d", b.seq), Duration: b.cfg.duration,
	})
	cancel()
	for e, n := range st.Errors {
		fmt.Fprintf(b.log, "  %d x %s\n", n, e)
	}
	reached, ok := sink.wait(st.Acknowledged, b.cfg.drainTimeout)
	s := summarize(st, reached, ok)
	if peakRSS != nil {
		s.rssMB = peakRSS()
	}
	if cpu != nil && st.Acknowledged > 0 {
		s.cpuMs = (cpu() - cpu0) * 1000 / float64(st.Acknowledged)
	}
	if k == kindDirect {
		b.lastDirect[lk] = st.Acknowledged
	}
	return s, nil
}

func summarize(st load.Stats, reached time.Time, complete bool) sample {
	s := sample{acked: st.Acknowledged, complete: complete}
	if st.Acknowledged == 0 {
		return s
	}
	slices.Sort(st.Latencies)
	s.p50, s.p99 = load.Percentile(st.Latencies, 50), load.Percentile(st.Latencies, 99)
	s.accepted = float64(st.Acknowledged) / st.LastAck.Sub(st.Start).Seconds()
	s.endToEnd = float64(st.Acknowledged) / reached.Sub(st.Start).Seconds()
	return s
}

// measureSource sends as many messages as the load client got through in
// its direct run with smtp-source (one message per connection, its
// default) and times it.
func (b *bench) measureSource(ctx context.Context, sink *sink, lk loadKey) (sample, error) {
	n := cmp.Or(b.lastDirect[lk], 2000)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.drainTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, b.smtpSource, "-s", strconv.Itoa(lk.sessions), "-m", strconv.Itoa(n), //nolint:gosec // the harness's own arguments
		"-l", strconv.Itoa(lk.size), "-f", from, "-t", "source@"+rcptDomain, sink.addr)
	if out, err := cmd.CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("smtp-source: %w: %s", err, out)
	}
	reached, ok := sink.wait(n, b.cfg.drainTimeout)
	el := reached.Sub(start).Seconds()
	return sample{accepted: float64(n) / el, endToEnd: float64(n) / el, acked: n, complete: ok}, nil
}

// sink is a running smtp-sink that counts the messages it receives.
type sink struct {
	cmd    *exec.Cmd
	addr   string
	port   int
	count  atomic.Int64
	target atomic.Int64
	at     atomic.Int64 // when count first reached target, Unix nanoseconds
	done   chan struct{}
}

var mesgCount = regexp.MustCompile(`mesg=(\d+)`)

func (b *bench) startSink(dir string) (*sink, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &sink{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port: port, done: make(chan struct{})}
	args := []string{"-c"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody") // smtp-sink refuses to run as root
	}
	s.cmd = exec.Command(b.smtpSink, append(args, s.addr, "1024")...) //nolint:gosec // the harness's own arguments
	logf, err := createLog(dir, "smtp-sink.log")
	if err != nil {
		return nil, err
	}
	s.cmd.Stderr = logf
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(s.done)
		defer func() { _ = logf.Close() }()
		// smtp-sink -c rewrites one line with \r after each message.
		sc := bufio.NewScanner(stdout)
		sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
			if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
				return i + 1, data[:i], nil
			}
			if atEOF && len(data) > 0 {
				return len(data), data, nil
			}
			return 0, nil, nil
		})
		for sc.Scan() {
			m := mesgCount.FindSubmatch(sc.Bytes())
			if m == nil {
				continue
			}
			n, _ := strconv.ParseInt(string(m[1]), 10, 64)
			s.count.Store(n)
			if t := s.target.Load(); t > 0 && n >= t {
				s.at.CompareAndSwap(0, time.Now().UnixNano())
			}
		}
	}()
	if err := waitListening(s.addr, 10*time.Second); err != nil {
		s.stop()
		return nil, fmt.Errorf("smtp-sink: %w", err)
	}
	return s, nil
}

// wait returns when the sink has n messages, or false after timeout.
func (s *sink) wait(n int, timeout time.Duration) (time.Time, bool) {
	s.target.Store(int64(n))
	if s.count.Load() >= int64(n) {
		return time.Now(), true // already there when the load ended
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if at := s.at.Load(); at != 0 {
			return time.Unix(0, at), true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Now(), false
}

func (s *sink) stop() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	<-s.done
}

// process is a relay under test.
type process struct {
	cmd  *exec.Cmd
	addr string
	pids func() []int
	stop func()
}

func (b *bench) startPostgate(dir string, sinkPort int) (*process, error) {
	manifests := filepath.Join(dir, "manifests")
	if err := os.MkdirAll(manifests, 0o750); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(manifests, "bench.yaml"), []byte(load.RelayManifests(sinkHost, sinkPort)), 0o600); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &process{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	p.cmd = exec.Command(b.cfg.postgate, "relay", "--manifests", manifests, //nolint:gosec // the harness's own arguments
		"--spool-dir", filepath.Join(dir, "spool"), "--smtp-bind-address", p.addr,
		"--dns-server", b.dns.Addr(), "--admin-bind-address", "", "--hostname", "postgate.bench.test",
		"--max-connections", "5000", "--max-connections-per-client", "5000")
	logf, err := createLog(dir, "postgate.log")
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = p.cmd.Wait(); _ = logf.Close(); close(exited) }()
	p.stop = func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-exited
		}
	}
	if err := waitListening(p.addr, 30*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("postgate did not start (%s): %w", filepath.Join(dir, "postgate.log"), err)
	}
	return p, nil
}

// createLog creates a log file in a run's directory under the work directory.
func createLog(dir, name string) (*os.File, error) {
	return os.Create(filepath.Join(dir, name)) //nolint:gosec // the harness's own work directory
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening waits until addr greets with 220.
func waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			var line string
			line, err = bufio.NewReader(c).ReadString('\n')
			_, _ = io.WriteString(c, "QUIT\r\n")
			_ = c.Close()
			if err == nil && strings.HasPrefix(line, "220") {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("greeting %q", strings.TrimSpace(line))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// statusKB reads a "kB" field of /proc/<pid>/status (VmRSS, VmHWM); 0 when
// it cannot.
func statusKB(pid int, field string) float64 {
	return procKB(fmt.Sprintf("/proc/%d/status", pid), field)
}

func procKB(path, field string) float64 {
	data, err := os.ReadFile(path) // #nosec G304 -- a /proc file of the harness's own children
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseFloat(f[0], 64)
				return v
			}
		}
	}
	return 0
}

// cpuSeconds is the CPU time (user and system) that the processes have
// used, and with children, that the first one's exited children used (the
// Postfix master reaps its daemons). Linux counts it in ticks of 1/100 s.
func cpuSeconds(pids []int, children bool) float64 {
	var ticks float64
	for i, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)) // #nosec G304 -- /proc
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: utime and stime are fields 14 and
		// 15, cutime and cstime 16 and 17 (proc(5)).
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(f) < 15 {
			continue
		}
		fields := []int{11, 12}
		if children && i == 0 {
			fields = append(fields, 13, 14)
		}
		for _, j := range fields {
			v, _ := strconv.ParseFloat(f[j], 64)
			ticks += v
		}
	}
	return ticks / 100
}

// sampler follows the memory of a group of processes (Postfix's master and
// its children) every 250 ms: the peak of the sum of their proportional set
// sizes, so that shared pages count once.
type sampler struct {
	stopped chan struct{}
	done    chan struct{}
	peakKB  float64
}

func startSampler(pids func() []int) *sampler {
	s := &sampler{stopped: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			var sum float64
			for _, pid := range pids() {
				sum += procKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss")
			}
			s.peakKB = max(s.peakKB, sum)
			select {
			case <-s.stopped:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop returns the peak in MB.
func (s *sampler) stop() float64 {
	close(s.stopped)
	<-s.done
	return s.peakKB / 1024
}

// descendants lists root and every process below it.
func descendants(root int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")) // #nosec G304 -- /proc
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		rest := string(data[bytes.LastIndexByte(data, ')')+1:])
		if f := strings.Fields(rest); len(f) > 1 {
			parent[pid], _ = strconv.Atoi(f[1])
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		for pid, pp := range parent {
			if pp == out[i] {
				out = append(out, pid)
			}
		}
	}
	return out
}

// perf records a CPU profile of pid until the returned function is called.
func (b *bench) perf(dir string, pid int) func() {
	out := filepath.Join(b.work, fmt.Sprintf("perf-%03d.data", b.seq))
	cmd := exec.Command("perf", "record", "-g", "-F", "499", "-o", out, "-p", strconv.Itoa(pid)) //nolint:gosec // the harness's own arguments
	logf, err := createLog(dir, "perf.log")
	if err != nil {
		return func() {}
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(b.log, "perf: %v\n", err)
		_ = logf.Close()
		return func() {}
	}
	fmt.Fprintf(b.log, "recording a CPU profile of postgate into %s (perf report -i %s)\n", out, out)
	return func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		_ = logf.Close()
	}
}
