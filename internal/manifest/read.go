package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"
)

// manifestFile reports whether a file in a directory is read as manifests:
// the extensions kubectl reads (.yaml, .yml, .json), but not kustomize's own
// files, which describe a build rather than objects. Hidden files (a
// .gitlab-ci.yml beside the manifests, the ..data links of a mounted
// ConfigMap) are left out before.
func manifestFile(name string) bool {
	switch name {
	case "kustomization.yaml", "kustomization.yml", "Kustomization":
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// listFiles returns the files that path stands for: itself when it is a
// file (whatever its name), else the manifest files in it sorted by name,
// and with recursive those of its subdirectories too (hidden ones excepted),
// depth first in order of names, as kubectl -R reads them. Links to files
// are followed (a ConfigMap mounted as a volume is a directory of links),
// links to directories only when given as path, so that no cycle is walked.
func listFiles(path string, recursive bool) (files []string, errs []error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, []error{pathError(path, err)}
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	var walk func(dir string)
	walk = func(dir string) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, pathError(dir, err))
		}
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			switch {
			case strings.HasPrefix(e.Name(), "."):
			case e.IsDir():
				if recursive {
					walk(p)
				}
			case manifestFile(e.Name()):
				if fi, err := os.Stat(p); err != nil {
					errs = append(errs, pathError(p, err))
				} else if fi.Mode().IsRegular() {
					files = append(files, p)
				}
			}
		}
	}
	walk(path)
	return files, errs
}

// pathError positions an error of the file system at the file it names.
func pathError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return &Error{Pos: Position{File: pe.Path}, Err: pe.Err}
	}
	return &Error{Pos: Position{File: path}, Err: err}
}

// document is one YAML document of a file.
type document struct {
	line int // the line of the file its first line is on
	data []byte
}

// splitDocuments splits a YAML stream at its "---" lines the way kubectl's
// reader does (k8s.io/apimachinery/pkg/util/yaml.YAMLReader): a line that
// starts with "---" followed by nothing but blanks or a comment.
func splitDocuments(data []byte) []document {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	var docs []document
	start, startLine, line := 0, 1, 1
	for i := 0; i < len(data); {
		end := bytes.IndexByte(data[i:], '\n')
		if end < 0 {
			end = len(data)
		} else {
			end += i + 1
		}
		if l := data[i:end]; bytes.HasPrefix(l, []byte("---")) {
			if rest := bytes.TrimSpace(l[3:]); len(rest) == 0 || rest[0] == '#' {
				docs = append(docs, document{line: startLine, data: data[start:i]})
				start, startLine = end, line+1
			}
		}
		i = end
		line++
	}
	return append(docs, document{line: startLine, data: data[start:]})
}

// decode converts a document to the JSON object kubectl would send (YAML
// 1.1 as sigs.k8s.io/yaml reads it, then JSON numbers as the API server
// reads them) and indexes the lines of its fields. It returns a nil object
// for an empty document. Duplicate keys are an error, where kubectl would
// silently keep the last.
func decode(file string, doc document) (map[string]any, map[string]int, error) {
	j, err := yaml.YAMLToJSONStrict(doc.data)
	if err != nil {
		line, msg := yamlErrorLine(err)
		return nil, nil, &Error{Pos: Position{File: file, Line: doc.line + max(line, 1) - 1}, Err: errors.New(msg)}
	}
	lines, extra := indexLines(doc)
	if extra > 0 {
		return nil, nil, &Error{Pos: Position{File: file, Line: extra}, Err: errors.New(`a second document starts here: separate documents with a line of "---"`)}
	}
	j = bytes.TrimSpace(j)
	if len(j) == 0 || bytes.Equal(j, []byte("null")) {
		return nil, nil, nil
	}
	if j[0] != '{' {
		return nil, nil, &Error{Pos: Position{File: file, Line: lookupLine(lines, "", doc.line)}, Err: fmt.Errorf("a document must be an object with apiVersion and kind, not %s", jsonKind(j[0]))}
	}
	var obj map[string]any
	if err := utiljson.Unmarshal(j, &obj); err != nil {
		return nil, nil, &Error{Pos: Position{File: file, Line: doc.line}, Err: err}
	}
	return obj, lines, nil
}

func jsonKind(first byte) string {
	switch first {
	case '[':
		return "a list"
	case '"':
		return "a string"
	}
	return "a scalar"
}

// yamlLine finds the "line N: " that YAML parser errors carry.
var yamlLine = regexp.MustCompile(`line (\d+): `)

// yamlErrorLine returns the line (of the document) a YAML error names, 0 if
// none, and the message without the line and without the wrapping that
// adds nothing to a positioned error.
func yamlErrorLine(err error) (int, string) {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.TrimPrefix(msg, "yaml: ")
	m := yamlLine.FindStringSubmatchIndex(msg)
	if m == nil {
		return 0, msg
	}
	line, _ := strconv.Atoi(msg[m[2]:m[3]])
	rest := msg[m[1]:]
	if nl := strings.IndexByte(rest, '\n'); nl >= 0 {
		rest = rest[:nl] + " (and more)"
	}
	return line, rest
}

// indexLines maps the field paths of a document ("spec.cidrs[1]", "" for
// the document itself) to their lines in the file, as far as a YAML 1.2
// parser reads the document the same way; positions are a help for
// messages, never a reason to refuse input. extra is the line of a second
// document in the same chunk (after a "--- " line with content), else 0.
// Aliases are not followed, which keeps the index linear in the input.
func indexLines(doc document) (lines map[string]int, extra int) {
	lines = map[string]int{}
	dec := yamlv3.NewDecoder(bytes.NewReader(doc.data))
	var root yamlv3.Node
	if err := dec.Decode(&root); err != nil {
		return lines, 0
	}
	offset := doc.line - 1
	var walk func(n *yamlv3.Node, path string)
	walk = func(n *yamlv3.Node, path string) {
		switch n.Kind {
		case yamlv3.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
			return
		case yamlv3.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if _, seen := lines[p]; !seen {
					lines[p] = k.Line + offset
				}
				walk(v, p)
			}
		case yamlv3.SequenceNode:
			for i, c := range n.Content {
				p := path + "[" + strconv.Itoa(i) + "]"
				lines[p] = c.Line + offset
				walk(c, p)
			}
		}
		if _, seen := lines[path]; !seen {
			lines[path] = n.Line + offset
		}
	}
	walk(&root, "")
	var next yamlv3.Node
	if err := dec.Decode(&next); err == nil {
		return lines, next.Line + offset
	}
	return lines, 0
}

// subLines returns the entries of lines under prefix (an item of a List),
// with the prefix removed.
func subLines(lines map[string]int, prefix string) map[string]int {
	if prefix == "" {
		return lines
	}
	sub := map[string]int{}
	for p, line := range lines {
		switch {
		case p == prefix:
			sub[""] = line
		case strings.HasPrefix(p, prefix+"."):
			sub[p[len(prefix)+1:]] = line
		case strings.HasPrefix(p, prefix+"["):
			sub[p[len(prefix):]] = line
		}
	}
	return sub
}
