package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// checkPostfix finds what a private Postfix instance needs: root (its
// master runs as root and drops privileges) and the postfix user.
func (b *bench) checkPostfix() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("a private Postfix instance needs root; run as root or with -skip-postfix")
	}
	if _, err := os.Stat("/usr/sbin/postfix"); err != nil {
		return fmt.Errorf("postfix is not installed: install Debian's postfix package (make bench does): %w", err)
	}
	u, err := user.Lookup("postfix")
	if err != nil {
		return err
	}
	b.postfixUID, err = strconv.Atoi(u.Uid)
	return err
}

// postfixMain is a Postfix instance of its own under dir: its own
// configuration, queue and data directories, listening on 127.0.0.1 only,
// relaying everything from loopback to the sink ({{route}}: relayhost, or a
// transport map entry for the recipients' domain), with no local delivery.
// Durability is Postfix's default: the cleanup server fsyncs each queue
// file before smtpd answers 250.
const postfixMain = `compatibility_level = 3.6
queue_directory = {{dir}}/spool
data_directory = {{dir}}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
local_recipient_maps =
local_transport = error:no local delivery
alias_maps =
alias_database =
{{route}}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {{dir}}/maillog
maillog_file_prefixes = {{dir}}
`

// postfixRoute is how the instance reaches the sink. Postfix's resolver
// reads the system's resolv.conf, which cannot name a server on another
// port than 53, so in place of an MX lookup the recipients' domain gets a
// transport map entry: like the MX, it applies to that domain only.
func postfixRoute(d delivery, sinkPort int) string {
	next := fmt.Sprintf("[%s]:%d", sinkIP, sinkPort)
	if d == deliveryMX {
		return fmt.Sprintf("transport_maps = inline:{%s=smtp:%s}", rcptDomain, next)
	}
	return "relayhost = " + next
}

var smtpService = regexp.MustCompile(`(?m)^smtp(\s+inet\s)`)

// startPostfix configures and starts a private Postfix instance with
// postfix -c: as root, the command needs no alternate_config_directories
// in a default main.cf (and this machine has none).
func (b *bench) startPostfix(dir string, sinkPort int, d delivery) (*process, error) {
	pdir := filepath.Join(dir, "postfix")
	etc := filepath.Join(pdir, "etc")
	for _, d := range []string{etc, filepath.Join(pdir, "spool"), filepath.Join(pdir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil { //nolint:gosec // Postfix's daemons, not root, read these
			return nil, err
		}
	}
	if err := os.Chown(filepath.Join(pdir, "data"), b.postfixUID, -1); err != nil {
		return nil, err
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	mainCF := strings.NewReplacer("{{dir}}", pdir, "{{route}}", postfixRoute(d, sinkPort)).Replace(postfixMain)
	if err := os.WriteFile(filepath.Join(etc, "main.cf"), []byte(mainCF), 0o644); err != nil { //nolint:gosec // Postfix's daemons read it
		return nil, err
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		return nil, err
	}
	if !smtpService.Match(master) {
		return nil, fmt.Errorf("/etc/postfix/master.cf has no smtp inet service")
	}
	master = smtpService.ReplaceAll(master, []byte(addr+"$1"))
	if err := os.WriteFile(filepath.Join(etc, "master.cf"), master, 0o644); err != nil { //nolint:gosec // Postfix's daemons read it
		return nil, err
	}
	// No chroot: the instance's files are not laid out for one.
	if err := postfixCmd(pdir, "postconf", "-c", etc, "-F", "*/*/chroot = n"); err != nil {
		return nil, err
	}
	if err := postfixCmd(pdir, "postfix", "-c", etc, "start"); err != nil {
		return nil, err
	}
	p := &process{addr: addr}
	masterPID := func() int {
		data, _ := os.ReadFile(filepath.Join(pdir, "spool", "pid", "master.pid")) // #nosec G304 -- the instance's own file
		pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		return pid
	}
	p.pids = func() []int {
		if pid := masterPID(); pid > 0 {
			return descendants(pid)
		}
		return nil
	}
	p.stop = func() {
		pid := masterPID()
		_ = postfixCmd(pdir, "postfix", "-c", etc, "stop")
		for deadline := time.Now().Add(30 * time.Second); pid > 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
				break
			}
		}
	}
	if err := waitListening(addr, 30*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("postfix did not start (%s): %w", filepath.Join(pdir, "maillog"), err)
	}
	return p, nil
}

// postfixCmd runs a Postfix command, its output appended to the instance's
// log.
func postfixCmd(pdir, name string, args ...string) error {
	out, err := exec.Command(filepath.Join("/usr/sbin", name), args...).CombinedOutput() //nolint:gosec // the harness's own arguments
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s (see %s)", name, strings.Join(args, " "), err, out, filepath.Join(pdir, "maillog"))
	}
	return nil
}
