package main

import (
	"fmt"
	"io"

	"github.com/postgate/postgate/internal/check"
	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/routing"
)

const checkUsage = `Usage: postgate check [flags] PATH...
       postgate check --shaping-policy FILE [flags] [PATH...]

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

With --shaping-policy FILE, the traffic shaping policy in FILE is validated
as the operator validates the shaping.yaml of its policy ConfigMap: a summary
when it is valid, otherwise every error (each naming the rule and the field),
on stdout (on stderr with -o json); exit status 1 when it is invalid, 2 when
it cannot be read. Manifests are then optional.

Flags:
`

// checkExit are the exit codes of postgate check.
const (
	checkOK         = 0
	checkRefused    = 1
	checkUnreadable = 2
)

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("check", checkUsage, stderr)
	var o check.Options
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return checkUnreadable
	}
	if fs.NArg() == 0 && o.ShapingPolicyFile == "" {
		fs.Usage()
		return checkUnreadable
	}
	err := o.Check()
	code := checkOK
	if err == nil && o.ShapingPolicyFile != "" {
		out := stdout
		if o.Output == "json" {
			out = stderr // stdout is one JSON array
		}
		var valid bool
		if valid, err = check.JudgeShaping(out, o.ShapingPolicyFile); err == nil && !valid {
			code = checkRefused
		}
	}
	if err == nil && fs.NArg() == 0 {
		return code
	}
	var policy routing.Policy
	if err == nil {
		policy, err = o.Policy()
	}
	var loader *manifest.Loader
	if err == nil {
		loader, err = o.Loader()
	}
	if err != nil {
		fmt.Fprintf(stderr, "postgate check: %v\n", err)
		return checkUnreadable
	}
	set, err := loader.Load(fs.Args()...)
	if err != nil {
		fmt.Fprintln(stderr, err) // one line per input that cannot be read (errors.Join)
		return checkUnreadable
	}
	report := check.Judge(set, policy)
	if err := o.Write(stdout, report); err != nil {
		fmt.Fprintf(stderr, "postgate check: %v\n", err)
		return checkUnreadable
	}
	if report.Failed(o.Strict) {
		return checkRefused
	}
	return code
}
