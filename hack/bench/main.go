// Command bench measures postgate relay against Postfix on loopback, side by
// side, with the same load and the same sink: `make bench` runs it. Each
// run starts a fresh smtp-sink (Postfix's test sink, counting what it
// receives), a fresh relay (postgate standalone with its fsynced spool, or
// a private Postfix instance with its default durability) that relays
// everything to that sink, warms it up with a short run whose numbers are
// discarded, drives it with a load, and waits until the sink has every
// acknowledged message. A load is a client and a way to deliver (-loads):
// the load client of package load for a fixed time, or smtp-source for a
// fixed count of messages, one per connection; a RelayRoute (Postfix: its
// relayhost), or postgate's own MX lookup on the loopback DNS server
// (Postfix: a transport map entry). The two relays alternate run by run;
// the table shows medians. The direct rows send the same load straight to
// the sink: the ceiling of the harness on this machine.
//
// Everything listens on 127.0.0.x and every loop is bounded.
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
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postgate/postgate/hack/internal/load"
	"github.com/postgate/postgate/internal/testenv"
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
	pprofRelay   string
	pprofTime    time.Duration
	keepWorkDir  bool
	loads        []loadSpec
	sourceCounts map[int]int // smtp-source's messages by size
	warmup       time.Duration
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
	var sizes, sessions, loads, counts string
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
	fs.StringVar(&c.pprofRelay, "pprof", "", "record a Go CPU profile, an allocation profile and an execution trace of postgate (its --pprof endpoint) for -pprof-time from the start of each run of this load, SIZE/SESSIONS, into the work directory (go tool pprof -top FILE, go tool trace FILE)")
	fs.DurationVar(&c.pprofTime, "pprof-time", 3*time.Second, "how long -pprof records, from the start of the load")
	fs.BoolVar(&c.keepWorkDir, "keep", false, "keep the work directory (logs, profiles)")
	fs.StringVar(&loads, "loads", "client/route,source/mx", "loads, comma-separated CLIENT/DELIVERY: CLIENT client (the load client, for -duration) or source (smtp-source, -source-messages, one message per connection); DELIVERY route (postgate: a RelayRoute, Postfix: relayhost) or mx (postgate: MX lookup on the loopback DNS server, Postfix: a transport map entry)")
	fs.StringVar(&counts, "source-messages", "1024=10000,102400=2000", fmt.Sprintf("smtp-source's messages per run by size, comma-separated SIZE=COUNT (%d for a size not listed)", defaultSourceMessages))
	fs.DurationVar(&c.warmup, "warmup", time.Second, "warm-up of each relay before it is measured, numbers discarded: the load client sends for this long, smtp-source a tenth of its count (0: none)")
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
	if c.loads, err = parseLoads(loads); err != nil {
		return nil, fmt.Errorf("-loads: %w", err)
	}
	if c.sourceCounts, err = parseCounts(counts); err != nil {
		return nil, fmt.Errorf("-source-messages: %w", err)
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

// loadKey is one row group of the table.
type loadKey struct {
	loadSpec
	size, sessions int
}

// sourceMessages is how many messages smtp-source sends in a run of lk.
func (b *bench) sourceMessages(lk loadKey) int {
	return cmp.Or(b.cfg.sourceCounts[lk.size], defaultSourceMessages)
}

// kinds are the rows of a load: the relays, then the direct runs of its
// client (the load client's and smtp-source's, the ceiling).
func (lk loadKey) kinds(relays []kind) []kind {
	if lk.client == clientSource {
		return append(slices.Clone(relays), kindSource)
	}
	return append(slices.Clone(relays), kindDirect, kindSource)
}

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
	// sinkIP is the sink's address: the loopback address of the MX host
	// of rcptDomain, and of sinkHost.
	sinkIP = "127.0.0.2"
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
	if err := b.dns.Add(sinkHost+". 60 IN A "+sinkIP, rcptDomain+". 60 IN MX 10 "+sinkHost+"."); err != nil {
		return err
	}
	loadAvg := loadAverage()
	fmt.Fprintf(b.log, "load average at the start: %s\n", loadAvg)

	kinds := []kind{kindPostgate, kindPostfix}
	if cfg.skipPostfix {
		kinds = kinds[:1]
	}
	results := map[loadKey]map[kind][]sample{}
	var loads []loadKey
	for _, spec := range cfg.loads {
		for _, size := range cfg.sizes {
			for _, sessions := range cfg.sessions {
				lk := loadKey{spec, size, sessions}
				loads = append(loads, lk)
				results[lk] = map[kind][]sample{}
				for r := range cfg.runs {
					order := slices.Clone(kinds)
					if r%2 == 1 {
						slices.Reverse(order) // alternate which relay runs first
					}
					for _, k := range lk.kinds(order) {
						s, err := b.measure(ctx, k, lk)
						if err != nil {
							return fmt.Errorf("%s, %s, %d bytes, %d sessions: %w", k, lk.loadSpec, lk.size, lk.sessions, err)
						}
						fmt.Fprintf(b.log, "%-20s %-13s %6d B %3d sessions run %d: accepted %7.0f/s, end to end %7.0f/s, p50 %s, p99 %s, RSS %.0f MB, CPU %.2f ms/msg, %d acknowledged%s\n",
							k, lk.loadSpec, lk.size, lk.sessions, r+1, s.accepted, s.endToEnd, latency(lk, k, s.p50), latency(lk, k, s.p99), s.rssMB, s.cpuMs, s.acked, incomplete(s))
						results[lk][k] = append(results[lk][k], s)
					}
				}
			}
		}
	}
	printTable(out, tableInfo{cfg: cfg, loadAvgStart: loadAvg, loadAvgEnd: loadAverage(), durability: durability(work, cfg.skipPostfix)}, loads, kinds, results)
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

	addr := sink.addr
	var peakRSS, cpu func() float64
	pgPID := 0
	var pg *process
	switch k {
	case kindPostgate:
		pprof := b.cfg.pprofRelay == fmt.Sprintf("%d/%d", lk.size, lk.sessions)
		pg, err = b.startPostgate(dir, sink.port, lk.delivery, pprof)
		if err != nil {
			return sample{}, err
		}
		defer pg.stop()
		pid := pg.cmd.Process.Pid
		pgPID = pid
		addr, peakRSS = pg.addr, func() float64 { return statusKB(pid, "VmHWM") / 1024 }
		cpu = func() float64 { return cpuSeconds([]int{pid}, false) }
	case kindPostfix:
		pf, err := b.startPostfix(dir, sink.port, lk.delivery)
		if err != nil {
			return sample{}, err
		}
		defer pf.stop()
		sampler := startSampler(pf.pids)
		addr, peakRSS = pf.addr, sampler.stop
		cpu = func() float64 { return cpuSeconds(pf.pids(), true) }
	}
	if cpu != nil && b.cfg.warmup > 0 {
		if err := b.warmUp(ctx, addr, sink, lk); err != nil {
			return sample{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	if pgPID > 0 && b.cfg.profileRelay == fmt.Sprintf("%d/%d", lk.size, lk.sessions) {
		stopProfile := b.perf(dir, pgPID)
		defer stopProfile()
	}
	if pg != nil && pg.pprofAddr != "" {
		wait := b.goProfile(pg.pprofAddr)
		defer wait()
	}
	var cpu0 float64
	if cpu != nil {
		cpu0 = cpu()
	}
	var s sample
	switch {
	case k == kindSource:
		s, err = b.runSource(ctx, sink.addr, sink, lk, cmp.Or(b.lastDirect[lk], b.sourceMessages(lk)))
	case lk.client == clientSource:
		s, err = b.runSource(ctx, addr, sink, lk, b.sourceMessages(lk))
	default:
		var st load.Stats
		s, st = b.runClient(ctx, addr, sink, lk, b.cfg.duration)
		if k == kindDirect {
			b.lastDirect[lk] = st.Acknowledged
		}
	}
	if err != nil {
		return sample{}, err
	}
	if peakRSS != nil {
		s.rssMB = peakRSS()
	}
	if cpu != nil && s.acked > 0 {
		s.cpuMs = (cpu() - cpu0) * 1000 / float64(s.acked)
	}
	return s, nil
}

// warmUp sends a short load of lk's client through a relay and waits until
// the sink has it: the relay's caches, processes and Go runtime are warm
// when it is measured, and the sink is idle again.
func (b *bench) warmUp(ctx context.Context, addr string, sink *sink, lk loadKey) error {
	if lk.client == clientSource {
		_, err := b.runSource(ctx, addr, sink, lk, max(b.sourceMessages(lk)/10, lk.sessions))
		return err
	}
	s, _ := b.runClient(ctx, addr, sink, lk, b.cfg.warmup)
	if !s.complete {
		return errors.New("the sink did not get every warm-up message in time")
	}
	return nil
}

// runClient sends the load client's load to addr for d and waits until the
// sink has every acknowledged message.
func (b *bench) runClient(ctx context.Context, addr string, sink *sink, lk loadKey, d time.Duration) (sample, load.Stats) {
	base := sink.count.Load()
	b.seq++
	lctx, cancel := context.WithTimeout(ctx, d+2*time.Minute)
	st := load.Run(lctx, load.Options{
		Addr: addr, Sessions: lk.sessions, Size: lk.size, From: from, RcptDomain: rcptDomain,
		Prefix: fmt.Sprintf("r%d", b.seq), Duration: d,
	})
	cancel()
	for e, n := range st.Errors {
		fmt.Fprintf(b.log, "  %d x %s\n", n, e)
	}
	reached, ok := sink.wait(base+int64(st.Acknowledged), b.cfg.drainTimeout)
	return summarize(st, reached, ok), st
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

// runSource sends n messages to addr with smtp-source (one message per
// connection, its default, each to a recipient of its own) and waits until
// the sink has them. smtp-source ends once every message is acknowledged:
// that is the accepted rate. It measures no latency, and reports a refusal
// only on its standard error; a refused message never reaches the sink, so
// the run shows as incomplete.
func (b *bench) runSource(ctx context.Context, addr string, sink *sink, lk loadKey, n int) (sample, error) {
	base := sink.count.Load()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.drainTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, b.smtpSource, "-s", strconv.Itoa(lk.sessions), "-m", strconv.Itoa(n), //nolint:gosec // the harness's own arguments
		"-l", strconv.Itoa(lk.size), "-N", "-f", from, "-t", "source@"+rcptDomain, addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("smtp-source: %w: %s", err, out)
	}
	sent := time.Since(start).Seconds()
	if len(out) > 0 {
		fmt.Fprintf(b.log, "  smtp-source: %s\n", bytes.TrimSpace(out))
	}
	reached, ok := sink.wait(base+int64(n), b.cfg.drainTimeout)
	return sample{accepted: float64(n) / sent, endToEnd: float64(n) / reached.Sub(start).Seconds(), acked: n, complete: ok}, nil
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
	port, err := freePort(sinkIP)
	if err != nil {
		return nil, err
	}
	s := &sink{addr: net.JoinHostPort(sinkIP, strconv.Itoa(port)), port: port, done: make(chan struct{})}
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

// wait returns when the sink has n messages in all, or false after timeout.
func (s *sink) wait(n int64, timeout time.Duration) (time.Time, bool) {
	s.at.Store(0)
	s.target.Store(n)
	if s.count.Load() >= n {
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
	// pprofAddr serves postgate's Go profiles; "" when off.
	pprofAddr string
}

// benchShapingPolicy shapes the bench's MX delivery (docs/design.md,
// "Traffic shaping").
const benchShapingPolicy = `default:
  maxConnections: 20
  maxMessagesPerConnection: 0
  maxNewConnectionsPerMinute: 0
  maxMessagesPerMinute: 0
  maxMessagesPerHour: 0
  suspension: {initial: 5m, max: 2h, resetAfter: 1h}
`

// startPostgate starts a standalone relay that delivers to the sink by a
// RelayRoute, or with deliveryMX by the MX of the recipients' domain on
// the loopback DNS server (the sink's port as the MX port).
func (b *bench) startPostgate(dir string, sinkPort int, d delivery, pprof bool) (*process, error) {
	manifests := filepath.Join(dir, "manifests")
	if err := os.MkdirAll(manifests, 0o750); err != nil {
		return nil, err
	}
	m := load.RelayManifests(sinkHost, sinkPort)
	if d == deliveryMX {
		m = load.SenderManifests()
	}
	if err := os.WriteFile(filepath.Join(manifests, "bench.yaml"), []byte(m), 0o600); err != nil {
		return nil, err
	}
	// Traffic shaping is on, as by default; the sink is the platform's own
	// MX, as a platform team would describe it: no rate limits, and the
	// 20 connections delivery used per destination before shaping.
	policy := filepath.Join(dir, "shaping.yaml")
	if err := os.WriteFile(policy, []byte(benchShapingPolicy), 0o600); err != nil {
		return nil, err
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	p := &process{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	p.cmd = exec.Command(b.cfg.postgate, "relay", "--manifests", manifests, //nolint:gosec // the harness's own arguments
		"--spool-dir", filepath.Join(dir, "spool"), "--smtp-bind-address", p.addr,
		"--dns-server", b.dns.Addr(), "--mx-port", strconv.Itoa(sinkPort), "--admin-bind-address", "", "--hostname", "postgate.bench.test",
		"--max-connections", "5000", "--max-connections-per-client", "5000",
		"--shaping", "--shaping-policy", policy)
	if pprof {
		port, err := freePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		p.pprofAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p.cmd.Args = append(p.cmd.Args, "--pprof", "--metrics-bind-address", p.pprofAddr)
	}
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

// freePort finds a free TCP port on the loopback address ip.
func freePort(ip string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
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

// goProfile records a Go CPU profile from postgate's --pprof endpoint for
// -pprof-time into the work directory; the returned function waits for it.
func (b *bench) goProfile(addr string) func() {
	out := filepath.Join(b.work, fmt.Sprintf("pprof-%03d.pb.gz", b.seq))
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(b.cfg.pprofTime.Seconds())))
	secs := max(1, int(b.cfg.pprofTime.Seconds()))
	trace := filepath.Join(b.work, fmt.Sprintf("trace-%03d.out", b.seq))
	traceURL := fmt.Sprintf("http://%s/debug/pprof/trace?seconds=%d", addr, secs)
	allocs := filepath.Join(b.work, fmt.Sprintf("allocs-%03d.pb.gz", b.seq))
	allocsURL := fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", addr, secs)
	fmt.Fprintf(b.log, "recording a Go CPU profile of postgate into %s (go tool pprof -top %s), its allocations into %s and an execution trace into %s (go tool trace %s)\n", out, out, allocs, trace, trace)
	var wg sync.WaitGroup
	for _, f := range []struct{ url, out string }{{url, out}, {traceURL, trace}, {allocsURL, allocs}} {
		wg.Go(func() {
			if err := fetch(f.url, f.out); err != nil {
				fmt.Fprintf(b.log, "pprof: %v\n", err)
			}
		})
	}
	return wg.Wait
}

// fetch saves the body of a GET of url to the file out.
func fetch(url, out string) error {
	resp, err := http.Get(url) //nolint:gosec,noctx // the harness's own relay, on loopback
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(out) //nolint:gosec // the harness's own work directory
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
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
