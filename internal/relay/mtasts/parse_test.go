package mtasts

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		mode    Mode
		mx      []string
		maxAge  time.Duration
		wantErr string
	}{
		{name: "CRLF", text: enforcePolicy, mode: ModeEnforce, mx: []string{"mx1.example.test", "*.mail.example.test"}, maxAge: 86400 * time.Second},
		{name: "LF, no final line end", text: "version: STSv1\nmode: testing\nmx: MX.Example.TEST\nmax_age: 0", mode: ModeTesting, mx: []string{"mx.example.test"}},
		{name: "mixed line ends, spaces and tabs", text: "version:STSv1\r\nmode:\t enforce \nmx:  a.test\t\r\nmax_age: 31557600\n", mode: ModeEnforce, mx: []string{"a.test"}, maxAge: maxMaxAge * time.Second},
		{name: "none without mx", text: nonePolicy, mode: ModeNone, maxAge: 86400 * time.Second},
		{name: "unknown keys ignored", text: "version: STSv1\nmode: enforce\nx-comment: hello world, ünïcode\nmx: a.test\nmax_age: 1\nMode: whatever\n", mode: ModeEnforce, mx: []string{"a.test"}, maxAge: time.Second},
		{name: "blank lines at the end", text: enforcePolicy + "\r\n\n", mode: ModeEnforce, mx: []string{"mx1.example.test", "*.mail.example.test"}, maxAge: 86400 * time.Second},

		{name: "empty", text: "", wantErr: "the policy is empty"},
		{name: "version not first", text: "mode: enforce\nversion: STSv1\nmx: a.test\nmax_age: 1\n", wantErr: `line 1: the policy must start with "version: STSv1"`},
		{name: "version STSv2", text: "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", wantErr: "line 1:"},
		{name: "second version", text: "version: STSv1\nversion: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\n", wantErr: "line 2: a second version field"},
		{name: "bad mode", text: "version: STSv1\nmode: Enforce\nmx: a.test\nmax_age: 1\n", wantErr: `line 2: mode "Enforce" is not enforce, testing or none`},
		{name: "second mode", text: "version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n", wantErr: "line 3: a second mode field"},
		{name: "max_age too large", text: "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", wantErr: "line 4: max_age 31557601 is over 31557600"},
		{name: "max_age 11 digits", text: "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 00000000001\n", wantErr: "line 4: max_age"},
		{name: "max_age negative", text: "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", wantErr: `line 4: max_age "-1"`},
		{name: "second max_age", text: "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\nmax_age: 2\n", wantErr: "line 5: a second max_age field"},
		{name: "no mode", text: "version: STSv1\nmx: a.test\nmax_age: 1\n", wantErr: "no mode field"},
		{name: "no max_age", text: "version: STSv1\nmode: enforce\nmx: a.test\n", wantErr: "no max_age field"},
		{name: "enforce without mx", text: "version: STSv1\nmode: enforce\nmax_age: 1\n", wantErr: "mode enforce and no mx field"},
		{name: "testing without mx", text: "version: STSv1\nmode: testing\nmax_age: 1\n", wantErr: "mode testing and no mx field"},
		{name: "mx with a final dot", text: "version: STSv1\nmode: enforce\nmx: a.test.\nmax_age: 1\n", wantErr: `line 3: mx "a.test."`},
		{name: "mx wildcard in the middle", text: "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n", wantErr: "line 3: mx"},
		{name: "mx bare wildcard", text: "version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", wantErr: "line 3: mx"},
		{name: "mx with a port", text: "version: STSv1\nmode: enforce\nmx: a.test:25\nmax_age: 1\n", wantErr: "line 3: mx"},
		{name: "blank line between fields", text: "version: STSv1\n\nmode: enforce\nmx: a.test\nmax_age: 1\n", wantErr: "line 2: a blank line"},
		{name: "no colon", text: "version: STSv1\nmode enforce\nmx: a.test\nmax_age: 1\n", wantErr: `line 2: "mode enforce" is not a "key: value" field`},
		{name: "space before the colon", text: "version: STSv1\nmode : enforce\nmx: a.test\nmax_age: 1\n", wantErr: `line 2: "mode " is not a field name`},
		{name: "leading space", text: "version: STSv1\n mode: enforce\nmx: a.test\nmax_age: 1\n", wantErr: "line 2:"},
		{name: "empty value", text: "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\nnote:\n", wantErr: "line 5: field note has no value"},
		{name: "bare CR", text: "version: STSv1\nmode: enforce\rmx: a.test\nmax_age: 1\n", wantErr: "line 2: the value of field mode holds the control character"},
		{name: "not UTF-8", text: "version: STSv1\nmode: enforce\nx: \xff\nmx: a.test\nmax_age: 1\n", wantErr: "not UTF-8"},
		{name: "HTML", text: "<html><body>version: STSv1</body></html>", wantErr: "line 1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy(tt.text)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Mode != tt.mode || !slices.Equal(p.MX, tt.mx) || p.MaxAge != tt.maxAge || p.Text != tt.text {
				t.Errorf("got mode %s mx %q max_age %v, want %s %q %v", p.Mode, p.MX, p.MaxAge, tt.mode, tt.mx, tt.maxAge)
			}
		})
	}
}

func TestParseRecord(t *testing.T) {
	tests := []struct {
		txt, id, wantErr string
	}{
		{txt: "v=STSv1; id=20160831085700Z;", id: "20160831085700Z"},
		{txt: "v=STSv1;id=abc", id: "abc"},
		{txt: "v=STSv1 ; id=abc ; ext=val-ue.1 ;", id: "abc"},
		{txt: "v=STSv1; ext=1; id=" + strings.Repeat("a", 32) + "; ", id: strings.Repeat("a", 32)},

		{txt: "v=STSv1;", wantErr: "not a name=value field"},
		{txt: "v=STSv1; ext=1", wantErr: "no id field"},
		{txt: "v=STSv1; id=" + strings.Repeat("a", 33), wantErr: "is not 1 to 32 letters and digits"},
		{txt: "v=STSv1; id=a-b", wantErr: `id "a-b" is not 1 to 32`},
		{txt: "v=STSv1; id=", wantErr: `id "" is not`},
		{txt: "v=STSv1; id=a; id=b", wantErr: "a second id field"},
		{txt: "v=STSv1; id=a;; x=1", wantErr: "not a name=value field"},
		{txt: "v=STSv1; id = a", wantErr: "not a name=value field"},
		{txt: "v=STSv1; id=a; ext=", wantErr: "field ext has no value"},
		{txt: "v=STSv1; id=a; ext=a=b", wantErr: "the value of field ext holds"},
		{txt: "v=STSv1 id=a", wantErr: `"v=STSv1" is not followed by ";"`},
		{txt: "v=STSv2; id=a", wantErr: `does not start with "v=STSv1"`},
		{txt: "V=STSv1; id=a", wantErr: `does not start with "v=STSv1"`},
	}
	for _, tt := range tests {
		id, err := parseRecord(tt.txt)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: id %q, error %v, want one with %q", tt.txt, id, err, tt.wantErr)
			}
			continue
		}
		if err != nil || id != tt.id {
			t.Errorf("%q: id %q, error %v, want %q", tt.txt, id, err, tt.id)
		}
	}
	for txt, want := range map[string]bool{"v=STSv1;": true, "v=STSv1 \t; id=a": true, "v=STSv1": false, "v=STSv10; id=a": false, "v=spf1 -all": false} {
		if got := isSTSRecord(txt); got != want {
			t.Errorf("isSTSRecord(%q) = %v, want %v", txt, got, want)
		}
	}
}

func TestMatch(t *testing.T) {
	p := &Policy{MX: []string{"mx1.example.com", "*.example.com", "*.mail.example.net"}}
	for host, want := range map[string]bool{
		"mx1.example.com":      true,
		"mx2.example.com":      true, // the wildcard
		"MX2.Example.COM.":     true, // normalised
		"a.b.example.com":      false,
		"example.com":          false,
		".example.com":         false,
		"x.mail.example.net":   true,
		"mail.example.net":     false,
		"mx1.example.com.evil": false,
		"evilexample.com":      false,
		"x.y.mail.example.net": false,
		"":                     false,
	} {
		if got := p.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
	if (&Policy{MX: []string{"*.example.com"}}).Match("example.com") {
		t.Error(`"*.example.com" matches "example.com"`)
	}
}

// FuzzParsePolicy checks that the parser never panics and that what it
// accepts holds its own invariants: a mode, a max_age in range, mx patterns
// that match themselves, the text kept whole.
func FuzzParsePolicy(f *testing.F) {
	for _, seed := range []string{enforcePolicy, testingPolicy, nonePolicy, "version: STSv1\nmode: enforce\nmx: *.a.test\nmax_age: 0",
		"version: STSv1\r\n\r\n", "version: STSv1\nmode: none\nmax_age: 99999999999\n", "x: y\n", "version:STSv1\nmode:\tnone\nmax_age:1\nü-: x\n"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		p, err := ParsePolicy(text)
		if err != nil {
			return
		}
		switch {
		case p.Mode != ModeEnforce && p.Mode != ModeTesting && p.Mode != ModeNone:
			t.Fatalf("mode %q", p.Mode)
		case p.MaxAge < 0 || p.MaxAge > maxMaxAge*time.Second:
			t.Fatalf("max_age %v", p.MaxAge)
		case p.Mode != ModeNone && len(p.MX) == 0:
			t.Fatal("no mx")
		case p.Text != text:
			t.Fatal("the text was changed")
		}
		for _, mx := range p.MX {
			host := strings.Replace(mx, "*", "x", 1)
			if !p.Match(host) {
				t.Fatalf("pattern %q does not match %q", mx, host)
			}
		}
		if len(p.Lines()) == 0 || p.Lines()[0] == "" {
			t.Fatalf("lines %q", p.Lines())
		}
	})
}

// FuzzParseRecord checks the TXT record parser the same way.
func FuzzParseRecord(f *testing.F) {
	for _, seed := range []string{"v=STSv1; id=20160831085700Z;", "v=STSv1;id=a;x=y", "v=STSv1 ; id=a ;", "v=STSv1;;", "v=STSv1; id=a; id=b"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, txt string) {
		id, err := parseRecord(txt)
		if err != nil {
			return
		}
		if !validID(id) || !isSTSRecord(txt) {
			t.Fatalf("accepted %q with id %q", txt, id)
		}
	})
}
