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

func printTable(out io.Writer, cfg *config, loads []loadKey, kinds []kind, results map[loadKey]map[kind][]sample) {
	fmt.Fprintf(out, "\nMedians of %d runs of %v each, %d CPUs; the relays alternate run by run. Ratio: postgate/Postfix, end to end. Ceiling: direct smtp-source -> smtp-sink, end to end.\n\n", cfg.runs, cfg.duration, runtime.NumCPU())
	fmt.Fprintln(out, "| load | relay | accepted msg/s | end-to-end msg/s | p50 accept | p99 accept | peak RSS | CPU per msg | postgate/Postfix | of ceiling |")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	var targets []string
	for _, lk := range loads {
		name := fmt.Sprintf("%s x %d", sizeName(lk.size), lk.sessions)
		r := results[lk]
		pg, pf, ceiling := median(r[kindPostgate]), median(r[kindPostfix]), median(r[kindSource])
		for _, k := range append(slices.Clone(kinds), kindDirect, kindSource) {
			s := median(r[k])
			ratio, ofCeiling, rss, cpu := "", "", "-", "-"
			if k == kindPostgate && len(r[kindPostfix]) > 0 && pf.endToEnd > 0 {
				ratio = fmt.Sprintf("%.2fx", s.endToEnd/pf.endToEnd)
			}
			if (k == kindPostgate || k == kindPostfix) && ceiling.endToEnd > 0 {
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
			p50, p99 := ms(s.p50), ms(s.p99)
			if k == kindSource {
				p50, p99 = "-", "-"
			}
			fmt.Fprintf(out, "| %s | %s%s | %.0f | %.0f | %s | %s | %s | %s | %s | %s |\n", name, k, mark, s.accepted, s.endToEnd, p50, p99, rss, cpu, ratio, ofCeiling)
		}
		if len(r[kindPostfix]) == 0 || pf.endToEnd == 0 {
			continue
		}
		ratio := pg.endToEnd / pf.endToEnd
		switch {
		case lk.size <= 1024 && lk.sessions == 50:
			targets = append(targets, verdict(fmt.Sprintf("%s end to end >= 3x Postfix", name), ratio >= 3, fmt.Sprintf("%.2fx", ratio)))
			if ceiling.endToEnd > 0 {
				of := pg.endToEnd / ceiling.endToEnd
				targets = append(targets, verdict(fmt.Sprintf("%s end to end >= 35%% of the ceiling", name), of >= 0.35, fmt.Sprintf("%.0f%%", 100*of)))
			}
		case lk.size >= 100*1024:
			targets = append(targets, verdict(fmt.Sprintf("%s end to end >= 2x Postfix", name), ratio >= 2, fmt.Sprintf("%.2fx", ratio)))
		}
	}
	fmt.Fprintln(out, "\nPeak RSS: postgate's VmHWM; Postfix's peak of the summed PSS of its processes (sampled every 250 ms). CPU per msg: the relay's user and system time (all of Postfix's processes) from the start of the load until the sink had every message, per acknowledged message.")
	if len(targets) > 0 {
		fmt.Fprintln(out, "\nTargets:")
		for _, t := range targets {
			fmt.Fprintln(out, "  "+t)
		}
	}
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
	pg, err := b.startPostgate(dir, sink.port)
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
