package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// median of the runs, field by field.
func median(runs []sample) sample {
	if len(runs) == 0 {
		return sample{}
	}
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m := sample{complete: true}
	m.accepted = pick(func(s sample) float64 { return s.accepted })
	m.endToEnd = pick(func(s sample) float64 { return s.endToEnd })
	m.p50 = time.Duration(pick(func(s sample) float64 { return float64(s.p50) }))
	m.p99 = time.Duration(pick(func(s sample) float64 { return float64(s.p99) }))
	m.rssMB = pick(func(s sample) float64 { return s.rssMB })
	m.cpuMs = pick(func(s sample) float64 { return s.cpuMs })
	m.acked = int(pick(func(s sample) float64 { return float64(s.acked) }))
	for _, r := range runs {
		m.complete = m.complete && r.complete
	}
	return m
}

func sizeName(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// tableInfo is what the table prints besides the runs.
type tableInfo struct {
	cfg                      *config
	loadAvgStart, loadAvgEnd string
	durability               []string
}

// notMeasured marks a latency that smtp-source does not measure.
const notMeasured = "n/m"

func printTable(out io.Writer, info tableInfo, loads []loadKey, kinds []kind, results map[loadKey]map[kind][]sample) {
	cfg := info.cfg
	fmt.Fprintf(out, "\nMedians of %d runs (load client: %v each; smtp-source: -source-messages), each relay warmed up for %v first (numbers discarded), %d CPUs, load average %s at the start and %s at the end; the relays alternate run by run. Ratio: postgate/Postfix, end to end. Ceiling: direct smtp-source -> smtp-sink, end to end.\n\n",
		cfg.runs, cfg.duration, cfg.warmup, runtime.NumCPU(), info.loadAvgStart, info.loadAvgEnd)
	for _, d := range info.durability {
		fmt.Fprintln(out, d)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| load | client | relay | delivery | accepted msg/s | end-to-end msg/s | p50 accept | p99 accept | peak RSS | CPU per msg | postgate/Postfix | ceiling msg/s | of ceiling |")
	fmt.Fprintln(out, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	var targets []string
	for _, lk := range loads {
		name := fmt.Sprintf("%s x %d", sizeName(lk.size), lk.sessions)
		r := results[lk]
		pf, ceiling := median(r[kindPostfix]), median(r[kindSource])
		for _, k := range lk.kinds(kinds) {
			fmt.Fprintln(out, row(name, lk, k, median(r[k]), pf, ceiling, len(r[kindPostfix]) > 0))
		}
		targets = append(targets, judge(fmt.Sprintf("%s, %s, %s", name, lk.clientName(), lk.delivery), lk, median(r[kindPostgate]), pf, ceiling, len(r[kindPostfix]) > 0)...)
	}
	fmt.Fprintln(out, "\nPeak RSS: postgate's VmHWM; Postfix's peak of the summed PSS of its processes (sampled every 250 ms). CPU per msg: the relay's user and system time (all of Postfix's processes) from the start of the load until the sink had every message, per acknowledged message. "+
		notMeasured+": not measured, smtp-source reports no latency. Delivery: RelayRoute / relayhost to the sink; MX (loopback DNS): postgate looks up the recipients' MX on a DNS server on loopback, which names the sink; transport map: Postfix's entry for the recipients' domain, naming the sink (its resolver cannot use that DNS server).")
	if len(targets) > 0 {
		fmt.Fprintln(out, "\nTargets:")
		for _, t := range targets {
			fmt.Fprintln(out, "  "+t)
		}
	}
}

// row is one line of the table: kind k's medians s under load lk, with
// Postfix's medians pf and the ceiling's for the ratio columns.
func row(name string, lk loadKey, k kind, s, pf, ceiling sample, havePostfix bool) string {
	ratio, ceil, ofCeiling, rss, cpu := "", "", "", "-", "-"
	relay := k == kindPostgate || k == kindPostfix
	if k == kindPostgate && havePostfix && pf.endToEnd > 0 {
		ratio = fmt.Sprintf("%.2fx", s.endToEnd/pf.endToEnd)
	}
	if relay && ceiling.endToEnd > 0 {
		ceil = fmt.Sprintf("%.0f", ceiling.endToEnd)
		ofCeiling = fmt.Sprintf("%.0f%%", 100*s.endToEnd/ceiling.endToEnd)
	}
	if s.rssMB > 0 {
		rss = fmt.Sprintf("%.0f MB", s.rssMB)
	}
	if s.cpuMs > 0 {
		cpu = fmt.Sprintf("%.2f ms", s.cpuMs)
	}
	mark := ""
	if !s.complete {
		mark = " (incomplete)"
	}
	p50, p99 := latency(lk, k, s.p50), latency(lk, k, s.p99)
	return fmt.Sprintf("| %s | %s | %s%s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s |",
		name, lk.clientName(), k, mark, lk.deliveryName(k), s.accepted, s.endToEnd, p50, p99, rss, cpu, ratio, ceil, ofCeiling)
}

// latency is an acceptance latency as the table and the log show it; for
// smtp-source's runs, that it was not measured.
func latency(lk loadKey, k kind, d time.Duration) string {
	if k == kindSource || lk.client == clientSource {
		return notMeasured
	}
	return ms(d)
}

// judge checks postgate's medians pg against the targets for load lk.
func judge(name string, lk loadKey, pg, pf, ceiling sample, havePostfix bool) []string {
	var out []string
	if havePostfix && pf.endToEnd > 0 {
		ratio := pg.endToEnd / pf.endToEnd
		got := fmt.Sprintf("%.2fx", ratio)
		switch {
		case lk.size <= 1024 && lk.sessions == 50:
			out = append(out, verdict(name+": end to end >= 3.5x Postfix", ratio >= 3.5, got))
		case lk.size <= 1024 && lk.sessions == 1:
			out = append(out, verdict(name+": end to end >= 2x Postfix", ratio >= 2, got))
		case lk.size >= 100*1024 && lk.sessions >= 20:
			out = append(out, verdict(name+": end to end >= 2x Postfix", ratio >= 2, got))
		}
	}
	if lk.size <= 1024 && lk.sessions == 50 && ceiling.endToEnd > 0 {
		of := pg.endToEnd / ceiling.endToEnd
		out = append(out, verdict(name+": end to end >= 45% of the ceiling", of >= 0.45, fmt.Sprintf("%.0f%%", 100*of)))
	}
	if lk.size <= 1024 && pg.cpuMs > 0 {
		out = append(out, verdict(name+": CPU per message <= 0.35 ms", pg.cpuMs <= 0.35, fmt.Sprintf("%.2f ms", pg.cpuMs)))
	}
	if lk.client == clientLoad && lk.sessions >= 20 && pg.p50 > 0 {
		out = append(out, verdict(name+": p99 acceptance <= 3x p50", pg.p99 <= 3*pg.p50, fmt.Sprintf("%s against %s", ms(pg.p99), ms(pg.p50))))
	}
	return out
}

func verdict(what string, met bool, got string) string {
	if met {
		return fmt.Sprintf("%s: met (%s)", what, got)
	}
	return fmt.Sprintf("%s: MISSED (%s)", what, got)
}

// idle opens cfg.idleSessions SMTP sessions to one postgate relay, each
// past EHLO and then idle, and prints the relay's memory.
func (b *bench) idle(ctx context.Context, out io.Writer) error {
	b.seq++
	dir := filepath.Join(b.work, "idle")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	sink, err := b.startSink(dir)
	if err != nil {
		return err
	}
	defer sink.stop()
	pg, err := b.startPostgate(dir, sink.port, deliveryRoute, false)
	if err != nil {
		return err
	}
	defer pg.stop()
	pid := pg.cmd.Process.Pid
	before := statusKB(pid, "VmRSS") / 1024
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	for range b.cfg.idleSessions {
		c, err := d.DialContext(ctx, "tcp", pg.addr)
		if err != nil {
			return fmt.Errorf("after %d sessions: %w", len(conns), err)
		}
		conns = append(conns, c)
		if err := ehlo(c); err != nil {
			return fmt.Errorf("session %d: %w", len(conns), err)
		}
	}
	time.Sleep(2 * time.Second)
	rss, hwm := statusKB(pid, "VmRSS")/1024, statusKB(pid, "VmHWM")/1024
	fmt.Fprintf(out, "\npostgate with %d open idle sessions (each past EHLO): RSS %.0f MB (before: %.0f MB), peak %.0f MB; %s\n",
		len(conns), rss, before, hwm, verdict("target under 150 MB", hwm < 150, fmt.Sprintf("%.0f MB", hwm)))
	return nil
}

// ehlo reads the greeting, says EHLO and reads the reply.
func ehlo(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	r := bufio.NewReader(c)
	readReply := func(want string) error {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			if !strings.HasPrefix(line, want) {
				return fmt.Errorf("reply %q", strings.TrimSpace(line))
			}
			if len(line) > 3 && line[3] == ' ' {
				return nil
			}
		}
	}
	if err := readReply("220"); err != nil {
		return err
	}
	if _, err := io.WriteString(c, "EHLO idle.test\r\n"); err != nil {
		return err
	}
	return readReply("250")
}
