// Command postgate is the one binary of postgate: the operator, the relay,
// offline validation of manifests, and queue tools, as subcommands. This
// package holds flags and wiring only.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `postgate: a Kubernetes operator and SMTP relay for managed mail relays.

Usage:
  postgate <command> [flags]

Commands:
  check      validate manifests offline, as the operator would judge them
  operator   run the operator: reconcile, publish the routing table, write status
  relay      run the SMTP relay (standalone with --manifests, or in a cluster);
             relay drain: hand a running relay's queue to its peers
  queue      list, show, flush, hold, release or delete a running relay's queued mail
  smoke      check an installed postgate: the relay answers SMTP, relays have a table
  version    print the version
  help       print this help
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a command line and returns the exit code: 0 for success, 1
// for a refusal, 2 for bad usage or unreadable input.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "version", "--version":
		fmt.Fprintln(stdout, "postgate", version)
		return 0
	case "check":
		return runCheck(args[1:], stdout, stderr)
	case "operator":
		return runOperator(args[1:], stderr)
	case "relay":
		if len(args) > 1 && args[1] == "drain" {
			return runRelayDrain(args[2:], stdout, stderr)
		}
		return runRelay(args[1:], stderr)
	case "queue":
		return runQueue(args[1:], stdout, stderr)
	case "smoke":
		return runSmoke(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "postgate: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// flagSet is a command's flag set: errors and -h go to stderr, the
// command's usage before the flags.
func flagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	return fs
}

// restConfig is the API server's configuration for --kubeconfig: the file,
// or else in-cluster, or $KUBECONFIG.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err == nil && cfg.QPS == 0 {
			cfg.QPS = -1 // as ctrl.GetConfig: the API server's priority and fairness limits, not 5 requests a second
		}
		return cfg, err
	}
	return ctrl.GetConfig()
}
