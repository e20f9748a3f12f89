package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseLoads(t *testing.T) {
	got, err := parseLoads("client/route, source/mx,client/route")
	if err != nil {
		t.Fatal(err)
	}
	want := []loadSpec{{clientLoad, deliveryRoute}, {clientSource, deliveryMX}}
	if !slices.Equal(got, want) {
		t.Errorf("parseLoads = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "client", "source/", "smtp-source/mx", "client/dns", "client/route,"} {
		if _, err := parseLoads(bad); err == nil {
			t.Errorf("parseLoads(%q) took it", bad)
		}
	}
}

func TestParseCounts(t *testing.T) {
	got, err := parseCounts("1024=10000, 102400=2000")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1024] != 10000 || got[102400] != 2000 {
		t.Errorf("parseCounts = %v", got)
	}
	for _, bad := range []string{"1024", "1024=", "=5", "1024=0", "-1=5", "1k=5"} {
		if _, err := parseCounts(bad); err == nil {
			t.Errorf("parseCounts(%q) took it", bad)
		}
	}
	b := &bench{cfg: &config{sourceCounts: got}}
	if n := b.sourceMessages(loadKey{size: 512}); n != defaultSourceMessages {
		t.Errorf("a size not listed sends %d messages, want %d", n, defaultSourceMessages)
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.loads, []loadSpec{{clientLoad, deliveryRoute}, {clientSource, deliveryMX}}) {
		t.Errorf("default loads %v", c.loads)
	}
	if c.sourceCounts[1024] != 10000 || c.sourceCounts[102400] != 2000 || c.warmup <= 0 {
		t.Errorf("default smtp-source counts %v, warm-up %v", c.sourceCounts, c.warmup)
	}
	if _, err := parseFlags([]string{"-loads", "client/smtp"}); err == nil {
		t.Error("a bad -loads was taken")
	}
}

func TestMountOf(t *testing.T) {
	mounts := `/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
/dev/vdb1 /tmp/with\040space xfs rw,noatime 0 0
/dev/vdc1 /tmpfoo ext4 rw 0 0
`
	for _, c := range []struct{ path, dir, fstype string }{
		{"/", "/", "ext4"},
		{"/var/lib/x", "/", "ext4"},
		{"/tmp", "/tmp", "tmpfs"},
		{"/tmp/postgate-bench-1", "/tmp", "tmpfs"},
		{"/tmp/with space/run", "/tmp/with space", "xfs"},
		{"/tmpfoo/a", "/tmpfoo", "ext4"},
		{"/tmpf", "/", "ext4"},
	} {
		m, ok := mountOf(mounts, c.path)
		if !ok || m.dir != c.dir || m.fstype != c.fstype {
			t.Errorf("mountOf(%q) = %+v, %v; want %s on %s", c.path, m, ok, c.fstype, c.dir)
		}
	}
	if _, ok := mountOf("proc /proc proc rw 0 0\n", "/tmp"); ok {
		t.Error("found a mount for a path no entry holds")
	}
}

func TestPostfixRoute(t *testing.T) {
	if got := postfixRoute(deliveryRoute, 2525); got != "relayhost = ["+sinkIP+"]:2525" {
		t.Errorf("route: %q", got)
	}
	// Postfix's inline table takes no spaces around '=' at its top level.
	if got := postfixRoute(deliveryMX, 2525); got != "transport_maps = inline:{"+rcptDomain+"=smtp:["+sinkIP+"]:2525}" {
		t.Errorf("mx: %q", got)
	}
}

func TestRowAndJudge(t *testing.T) {
	src := loadKey{loadSpec{clientSource, deliveryMX}, 1024, 50}
	pg := sample{accepted: 800, endToEnd: 700, cpuMs: 1.2, rssMB: 60, complete: true, p50: time.Millisecond}
	pf := sample{endToEnd: 350, complete: true}
	ceiling := sample{endToEnd: 1400, complete: true}
	r := row("1 KB x 50", src, kindPostgate, pg, pf, ceiling, true)
	for _, want := range []string{"| smtp-source |", "| MX (loopback DNS) |", "| " + notMeasured + " | " + notMeasured + " |", "| 2.00x |", "| 1400 | 50% |", "1.20 ms"} {
		if !strings.Contains(r, want) {
			t.Errorf("row %q lacks %q", r, want)
		}
	}
	if r := row("1 KB x 50", src, kindPostfix, pf, pf, ceiling, true); !strings.Contains(r, "| transport map |") {
		t.Errorf("Postfix row %q", r)
	}
	if r := row("1 KB x 50", src, kindSource, ceiling, pf, ceiling, true); !strings.Contains(r, "| direct, smtp-source | - |") || strings.Contains(r, "%") {
		t.Errorf("ceiling row %q", r)
	}
	got := strings.Join(judge("x", src, pg, pf, ceiling, true), "\n")
	for _, want := range []string{"3.5x Postfix: MISSED (2.00x)", "45% of the ceiling: met (50%)", "0.35 ms: MISSED (1.20 ms)"} {
		if !strings.Contains(got, want) {
			t.Errorf("targets %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "p99") {
		t.Errorf("judged latency smtp-source does not measure: %q", got)
	}
	cl := loadKey{loadSpec{clientLoad, deliveryRoute}, 1024, 50}
	pg.p99 = 4 * time.Millisecond
	if got := strings.Join(judge("x", cl, pg, pf, ceiling, true), "\n"); !strings.Contains(got, "p99 acceptance <= 3x p50: MISSED") {
		t.Errorf("targets %q", got)
	}
}
