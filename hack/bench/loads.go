package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// client is the program that sends a load.
type client string

const (
	// clientLoad is package load: sessions that send one message after
	// another over one connection and time each.
	clientLoad client = "client"
	// clientSource is Postfix's smtp-source: one message per connection
	// (its default), no latency measured.
	clientSource client = "source"
)

// delivery is how the relays reach the sink.
type delivery string

const (
	// deliveryRoute: postgate by a RelayRoute to the sink, Postfix by
	// relayhost.
	deliveryRoute delivery = "route"
	// deliveryMX: postgate looks up the recipient domain's MX on the
	// loopback DNS server, which points it at the sink; Postfix, whose
	// resolver cannot be pointed at a server on another port, by a
	// transport map entry for the recipient domain.
	deliveryMX delivery = "mx"
)

// loadSpec is one load of -loads: who sends, and how the relays deliver.
type loadSpec struct {
	client   client
	delivery delivery
}

func (l loadSpec) String() string { return string(l.client) + "/" + string(l.delivery) }

// clientName is the load's client as the table shows it.
func (l loadSpec) clientName() string {
	if l.client == clientSource {
		return "smtp-source"
	}
	return "load client"
}

// deliveryName is how a kind of relay delivers under the load, as the table
// shows it.
func (l loadSpec) deliveryName(k kind) string {
	switch {
	case k == kindPostgate && l.delivery == deliveryMX:
		return "MX (loopback DNS)"
	case k == kindPostgate:
		return "RelayRoute"
	case k == kindPostfix && l.delivery == deliveryMX:
		return "transport map"
	case k == kindPostfix:
		return "relayhost"
	}
	return "-"
}

// parseLoads reads -loads: comma-separated CLIENT/DELIVERY, CLIENT one of
// client and source, DELIVERY one of route and mx.
func parseLoads(s string) ([]loadSpec, error) {
	var out []loadSpec
	seen := map[loadSpec]bool{}
	for f := range strings.SplitSeq(s, ",") {
		c, d, ok := strings.Cut(strings.TrimSpace(f), "/")
		l := loadSpec{client(c), delivery(d)}
		if !ok || (l.client != clientLoad && l.client != clientSource) || (l.delivery != deliveryRoute && l.delivery != deliveryMX) {
			return nil, fmt.Errorf("%q is not CLIENT/DELIVERY (client or source / route or mx)", f)
		}
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out, nil
}

// parseCounts reads -source-messages: comma-separated SIZE=COUNT.
func parseCounts(s string) (map[int]int, error) {
	out := map[int]int{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for f := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		size, err1 := strconv.Atoi(k)
		n, err2 := strconv.Atoi(v)
		if !ok || err1 != nil || err2 != nil || size <= 0 || n <= 0 {
			return nil, fmt.Errorf("%q is not SIZE=COUNT with positive integers", f)
		}
		out[size] = n
	}
	return out, nil
}

// defaultSourceMessages is smtp-source's message count for a size that
// -source-messages does not list.
const defaultSourceMessages = 2000

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// mount is the /proc/mounts entry of a file system.
type mount struct{ dir, fstype, options string }

// mountOf finds, in the text of /proc/mounts, the mount that holds path (an
// absolute, clean path): the longest mount point that is path or a parent
// of it.
func mountOf(mounts, path string) (mount, bool) {
	var best mount
	found := false
	for line := range strings.SplitSeq(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		// Spaces and the like in mount points are octal escapes (\040).
		dir := unescapeMount(f[1])
		if dir != "/" && path != dir && !strings.HasPrefix(path, dir+"/") {
			continue
		}
		if !found || len(dir) >= len(best.dir) {
			best, found = mount{dir: dir, fstype: f[2], options: f[3]}, true
		}
	}
	return best, found
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// durability describes where and how each relay keeps what it acknowledged,
// for the table: both queues live in the work directory, on one file system.
func durability(work string, skipPostfix bool) []string {
	where := work
	if abs, err := filepath.Abs(work); err == nil {
		where = filepath.Clean(abs)
	}
	fs := "an unknown file system"
	if data, err := os.ReadFile("/proc/mounts"); err == nil {
		if m, ok := mountOf(string(data), where); ok {
			fs = fmt.Sprintf("%s mounted on %s (%s)", m.fstype, m.dir, m.options)
		}
	}
	out := []string{
		fmt.Sprintf("Work directory %s: %s.", where, fs),
		"postgate: spool in the work directory, fsync on: a message of at most 1 MiB is appended to a shared segment file and fsynced before the 250 (one fsync per group of concurrent acceptances), a delivered record fsynced within about a second; a larger message gets a file of its own, fsynced with the spool directory.",
	}
	if !skipPostfix {
		out = append(out, "Postfix: queue in the work directory (same disk), its default durability: the cleanup server fsyncs each queue file before smtpd's 250 (no setting turns it off), no directory sync.")
	}
	return out
}
