package check

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/postgate/postgate/internal/relay/shaping"
)

// JudgeShaping validates a traffic shaping policy file offline, as the
// operator validates the shaping.yaml of its policy ConfigMap (the same
// parser), and writes the verdict to w: a summary of a valid policy, or
// every error as the parser gives it (each naming the rule and the field).
// It reports whether the policy is valid; err is a file that cannot be
// read.
func JudgeShaping(w io.Writer, path string) (valid bool, err error) {
	p, err := shaping.ParseFile(path)
	var pathErr *fs.PathError
	switch {
	case errors.As(err, &pathErr):
		return false, err
	case err != nil:
		fmt.Fprintln(w, err)
		return false, nil
	}
	names := make([]string, len(p.Sites))
	for i, r := range p.Sites {
		names[i] = r.Name
	}
	rules := "no site rules"
	if len(names) > 0 {
		rules = fmt.Sprintf("%d site rules (%s)", len(names), strings.Join(names, ", "))
	}
	fmt.Fprintf(w, "%s: valid shaping policy: the default rule and %s\n", path, rules)
	return true, nil
}
