package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readmeRow is one flag of the README's worker configuration table.
type readmeRow struct {
	flag, env, def string
	line           int // 1-based line of README.md, for the message
}

// readmeConfigTable parses the table under "## Configuration" in README.md
// (columns flag | environment | default | meaning) into one row per flag. A
// row may name several flags in one cell ("`--retry-base`, `--retry-cap`"):
// its environment and default cells then list as many values, in the same
// order. A default in parentheses ("(none)", "(else TRUTO_API_TOKEN)") means
// the flag's own default is empty.
func readmeConfigTable(t *testing.T, readme string) []readmeRow {
	t.Helper()
	lines := strings.Split(readme, "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == "## Configuration" {
			start = i + 1
			break
		}
	}
	if start < 0 {
		t.Fatal(`README.md has no "## Configuration" section`)
	}
	header := -1
	for i := start; i < len(lines) && !strings.HasPrefix(lines[i], "## "); i++ {
		cells := tableCells(lines[i])
		if len(cells) == 4 && cells[0] == "flag" && cells[1] == "environment" && cells[2] == "default" {
			header = i
			break
		}
	}
	if header < 0 {
		t.Fatal(`README.md's "## Configuration" has no table with the columns flag | environment | default | meaning`)
	}
	var rows []readmeRow
	for i := header + 2; i < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i]), "|"); i++ {
		cells := tableCells(lines[i])
		if len(cells) != 4 {
			t.Errorf("README.md:%d: %d cells, want 4 (flag | environment | default | meaning): %s", i+1, len(cells), lines[i])
			continue
		}
		flags, envs := codeSpans(cells[0]), codeSpans(cells[1])
		var defs []string
		switch d := strings.TrimSpace(cells[2]); {
		case strings.HasPrefix(d, "("):
			defs = []string{""}
		default:
			defs = codeSpans(d)
		}
		if len(flags) == 0 || len(envs) != len(flags) || len(defs) != len(flags) {
			t.Errorf("README.md:%d: %d flags, %d environment variables and %d defaults; want one of each per flag: %s",
				i+1, len(flags), len(envs), len(defs), lines[i])
			continue
		}
		for j, f := range flags {
			if !strings.HasPrefix(f, "--") {
				t.Errorf("README.md:%d: flag %q does not start with --", i+1, f)
				continue
			}
			rows = append(rows, readmeRow{flag: strings.TrimPrefix(f, "--"), env: envs[j], def: defs[j], line: i + 1})
		}
	}
	return rows
}

// tableCells splits a Markdown table row into its trimmed cells (nil for a
// line that is not a row). Pipes inside code spans are not expected.
func tableCells(line string) []string {
	l := strings.TrimSpace(line)
	if !strings.HasPrefix(l, "|") || !strings.HasSuffix(l, "|") || len(l) < 2 {
		return nil
	}
	parts := strings.Split(l[1:len(l)-1], "|")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

// codeSpans returns the contents of the `code spans` in s, in order.
func codeSpans(s string) []string {
	var out []string
	for {
		a := strings.IndexByte(s, '`')
		if a < 0 {
			return out
		}
		b := strings.IndexByte(s[a+1:], '`')
		if b < 0 {
			return out
		}
		out = append(out, s[a+1:a+1+b])
		s = s[a+1+b+1:]
	}
}

// sameDefault compares a README default with the code's: equal as text, or
// as durations ("10m" is "10m0s").
func sameDefault(readme, code string) bool {
	if readme == code {
		return true
	}
	r, err1 := time.ParseDuration(readme)
	c, err2 := time.ParseDuration(code)
	return err1 == nil && err2 == nil && r == c
}

// TestReadmeConfigurationMatchesFlags: every flag of README.md's
// configuration table exists in the worker's settings with the same
// environment variable and default, and every flag of the worker is in the
// table, so an operator reading the README is told what the worker does.
func TestReadmeConfigurationMatchesFlags(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := readmeConfigTable(t, string(b))
	if len(rows) == 0 {
		t.Fatal("README.md's configuration table has no rows")
	}
	code := map[string]setting{}
	for _, s := range settings {
		code[s.flag] = s
	}
	inReadme := map[string]bool{}
	for _, r := range rows {
		if inReadme[r.flag] {
			t.Errorf("README.md:%d: --%s is listed twice", r.line, r.flag)
		}
		inReadme[r.flag] = true
		s, ok := code[r.flag]
		if !ok {
			t.Errorf("README.md:%d: --%s is not a flag of the worker (internal/worker/config.go)", r.line, r.flag)
			continue
		}
		if r.env != s.env {
			t.Errorf("README.md:%d: --%s: environment %s, but the worker reads %s", r.line, r.flag, r.env, s.env)
		}
		if !sameDefault(r.def, s.def) {
			t.Errorf("README.md:%d: --%s: default %q, but the worker's is %q", r.line, r.flag, r.def, s.def)
		}
	}
	for _, s := range settings {
		if !inReadme[s.flag] {
			t.Errorf("--%s (%s, default %q) is a flag of the worker missing from README.md's configuration table", s.flag, s.env, s.def)
		}
	}
}
