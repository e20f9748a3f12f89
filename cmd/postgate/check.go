package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/postgate/postgate/internal/check"
	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/routing"
)

const checkUsage = `Usage: postgate check [flags] PATH...

Validates manifests offline, as the operator would judge them: reads the
files and directories given (multi-document YAML; file order stands in for
creation time), admits each object with the CRD schemas, compiles, and prints
one line per object: position, kind, namespace/name, verdict, reason, message.

Exit status: 0 when everything is accepted; 1 when an object is refused or a
Secret it references is unusable; 2 when input cannot be read. A Secret that
is not among the given files is reported Unknown (it may come from a secret
manager) and fails only with --strict. A DKIM key to generate is Pending: it
is made on first use.

With -o json, stdout is one JSON array with one verdict per object (kind,
namespace, name, file, line, verdict, condition, status, reason, message,
and the field errors of an object the API server would refuse), for CI
annotations; the exit status is the same.

Flags:
`

// checkExit are the exit codes of postgate check.
const (
	checkOK         = 0
	checkRefused    = 1
	checkUnreadable = 2
)

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	strict := fs.Bool("strict", false, "fail also when a referenced Secret is not among the given files")
	namespace := fs.String("namespace", metav1.NamespaceDefault, "namespace of objects whose manifest sets none")
	recursive := fs.Bool("recursive", false, "read the subdirectories of directories too")
	policyFile := fs.String("policy", "", "guardrail policy file (the policy.yaml of the operator's policy ConfigMap)")
	output := "text"
	fs.StringVar(&output, "o", output, "output format: text or json")
	fs.StringVar(&output, "output", output, "output format: text or json (same as -o)")
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return checkUnreadable
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return checkUnreadable
	}
	if output != "text" && output != "json" {
		fmt.Fprintf(stderr, "postgate check: -o %q: the output format is text or json\n", output)
		return checkUnreadable
	}

	var policy routing.Policy
	if *policyFile != "" {
		data, err := os.ReadFile(*policyFile)
		if err == nil {
			policy, err = routing.ParsePolicy(data)
		}
		if err != nil {
			fmt.Fprintf(stderr, "postgate check: %s: %v\n", *policyFile, err)
			return checkUnreadable
		}
	}
	opts := []manifest.Option{manifest.WithNamespace(*namespace)}
	if *recursive {
		opts = append(opts, manifest.WithRecursive())
	}
	loader, err := manifest.NewLoader(opts...)
	if err != nil {
		fmt.Fprintf(stderr, "postgate check: %v\n", err)
		return checkUnreadable
	}
	set, err := loader.Load(fs.Args()...)
	if err != nil {
		for _, e := range flattenErrors(err) {
			fmt.Fprintf(stderr, "%v\n", e)
		}
		return checkUnreadable
	}

	report := check.Judge(set, policy)
	if output == "json" {
		if err := report.WriteJSON(stdout); err != nil {
			fmt.Fprintf(stderr, "postgate check: %v\n", err)
			return checkUnreadable
		}
	} else {
		report.WriteText(stdout)
	}
	if report.Failed(*strict) {
		return checkRefused
	}
	return checkOK
}

// flattenErrors undoes errors.Join, so each error prints on its own line.
func flattenErrors(err error) []error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		return joined.Unwrap()
	}
	return []error{err}
}
