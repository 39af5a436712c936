package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/tasks"
)

// validLine is an update line for organization org.
func validLine(org string) string {
	return fmt.Sprintf(`{"id":%q,"integrated_account_id":"acc1","body":{"name":%q}}`, org, org)
}

// writeFile writes content to a fresh file and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "updates.ndjson")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ignoreTiming leaves the timing fields out of a summary comparison.
var ignoreTiming = cmpopts.IgnoreFields(bulkSummary{}, "Seconds", "PerSecond")

func TestBulkMixedFile(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	overLong := `{"id":"o6","integrated_account_id":"acc1","body":{"pad":"` + strings.Repeat("x", maxLineBytes) + `"}}`
	lines := []string{
		validLine("o1"),     // 1
		`{"id": "o2", oops`, // 2: not JSON
		"   ",               // 3: blank
		`{"id":"o4","integrated_account_id":"acc1","body":{"a":1},"idempotency_key":"key-4"}`, // 4
		`{"id":"o5","integrated_account_id":"acc1","body":[1]}`,                               // 5: body not an object
		overLong, // 6
		`{"id":"o7","integrated_acount_id":"acc1","body":{}}`, // 7: typo
		"",                     // 8: blank
		validLine("o9") + "\r", // 9: CRLF
		validLine("o10"),       // 10: no final newline
	}
	path := writeFile(t, strings.Join(lines, "\n"))
	r := cli(t, f.srv, "", "bulk", path, "--run", "mixed", "--concurrency", "3")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q", r.code, r.stderr)
	}
	var got bulkSummary
	decode(t, r, &got)
	want := bulkSummary{Run: "mixed", Read: 8, Enqueued: 4, Invalid: 4}
	if diff := cmp.Diff(want, got, ignoreTiming); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}
	wantErr := []string{
		"line 2: line: is not valid JSON",
		"line 5: body: must be a JSON object",
		fmt.Sprintf("line 6: longer than %d bytes", maxLineBytes),
		`line 7: integrated_acount_id: is not a field; the fields here are body, id, idempotency_key, integrated_account_id, options`,
	}
	gotErr := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(gotErr) != len(wantErr) {
		t.Fatalf("stderr has %d lines, want %d:\n%s", len(gotErr), len(wantErr), r.stderr)
	}
	for i, w := range wantErr {
		if !strings.HasPrefix(gotErr[i], w) {
			t.Errorf("stderr line %d = %q, want prefix %q", i+1, gotErr[i], w)
		}
	}
	wantIDs := []string{
		tasks.TaskID("acc1", tasks.RunKey("mixed", 1, []byte(lines[0]))),
		tasks.TaskID("acc1", "key-4"),
		tasks.TaskID("acc1", tasks.RunKey("mixed", 9, []byte(validLine("o9")))),
		tasks.TaskID("acc1", tasks.RunKey("mixed", 10, []byte(lines[9]))),
	}
	if diff := cmp.Diff(wantIDs, f.inAdmission(t, wantIDs...)); diff != "" {
		t.Errorf("task ids in admission (-want +got):\n%s", diff)
	}
	if n := f.held(t, "acc1"); n != int64(len(wantIDs)) {
		t.Errorf("admission holds %d updates, want exactly the %d valid lines", n, len(wantIDs))
	}
}

func TestBulkRerunSameRun(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var b strings.Builder
	for i := range 50 {
		b.WriteString(validLine(fmt.Sprintf("org%d", i%5)) + "\n") // repeated content: still 50 intents
	}
	path := writeFile(t, b.String())
	tests := []struct {
		name string
		run  string
		want bulkSummary
	}{
		{"first run", "r1", bulkSummary{Run: "r1", Read: 50, Enqueued: 50}},
		{"same run again", "r1", bulkSummary{Run: "r1", Read: 50, Duplicates: 50}},
		{"another run name", "r2", bulkSummary{Run: "r2", Read: 50, Enqueued: 50}},
	}
	for _, tt := range tests { // in order: each builds on the last
		r := cli(t, f.srv, "", "bulk", path, "--run", tt.run)
		if r.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", tt.name, r.code, r.stderr)
		}
		var got bulkSummary
		decode(t, r, &got)
		if diff := cmp.Diff(tt.want, got, ignoreTiming); diff != "" {
			t.Errorf("%s: summary (-want +got):\n%s", tt.name, diff)
		}
		// Each line once in its run, whatever the re-runs; sealed once read whole.
		st, err := f.store.Runs().Get(t.Context(), tt.run)
		if err != nil || st.Total != 50 || st.Waiting != 50 || !st.Sealed {
			t.Errorf("%s: run %s is %+v (%v); want 50 lines waiting, sealed", tt.name, tt.run, st, err)
		}
	}
	if n := f.held(t, "acc1"); n != 100 {
		t.Errorf("admission holds %d updates, want 100", n)
	}
}

func TestBulkStdin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	input := validLine("a") + "\n" + validLine("b") + "\n\n"
	for _, args := range [][]string{{"bulk", "-"}, {"bulk"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			r := cli(t, f.srv, input, args...)
			if r.code != 0 {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			var got bulkSummary
			decode(t, r, &got)
			if diff := cmp.Diff(bulkSummary{Read: 2, Enqueued: 2}, got, ignoreTiming); diff != "" {
				t.Errorf("summary (-want +got):\n%s", diff)
			}
			if r.stderr != "" {
				t.Errorf("stderr = %q, want nothing (not a terminal: no progress bar)", r.stderr)
			}
		})
	}
}

func TestBulkMaxRetry(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := cli(t, f.srv, `{"id":"o","integrated_account_id":"a","body":{},"idempotency_key":"k"}`, "bulk", "--max-retry", "4", "--run", "x")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	p, _ := f.payload(t, tasks.TaskID("a", "k"))
	if p.MaxRetry != 4 || p.Run != "x" {
		t.Errorf("payload max_retry %d run %q, want 4 and x", p.MaxRetry, p.Run)
	}
}

func TestBulkRedisFailure(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	var b strings.Builder
	for i := range 200 {
		b.WriteString(validLine(fmt.Sprint(i)) + "\n")
	}
	// Redis dies once bulk is connected: every line left must count as failed.
	a := newApp(strings.NewReader(b.String()), &strings.Builder{}, &strings.Builder{}, nil)
	a.redisURL = srv.URL()
	if err := a.connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer a.close()
	srv.Kill()
	sum, err := a.bulk(t.Context(), strings.NewReader(b.String()), bulkFlags{run: "r", concurrency: 4})
	if err != nil {
		t.Fatalf("bulk: %v", err)
	}
	if sum.Failed == 0 || sum.Enqueued != 0 || sum.Read != sum.Failed {
		t.Errorf("summary = %+v, want every read line failed", sum)
	}
}

func TestBulkUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"bulk", "/nonexistent/updates.ndjson"}, "give a readable NDJSON file"},
		{"two files", []string{"bulk", "a", "b"}, "accepts at most 1 arg"},
		{"zero concurrency", []string{"bulk", "--concurrency", "0"}, "--concurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, nil, "", tt.args...)
			if r.code != 2 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("exit %d stderr %q, want 2 and %q", r.code, r.stderr, tt.want)
			}
		})
	}
}

func TestReadLine(t *testing.T) {
	t.Parallel()
	type line struct {
		Text    string
		TooLong bool
	}
	tests := []struct {
		name  string
		input string
		max   int
		want  []line
	}{
		{"empty", "", 10, nil},
		{"lines", "a\nbb\r\n\nccc", 10, []line{{"a", false}, {"bb", false}, {"", false}, {"ccc", false}}},
		{"exactly max", "12345\n", 5, []line{{"12345", false}}},
		{"one over", "123456\nok\n", 5, []line{{"", true}, {"ok", false}}},
		{"far over the buffer", strings.Repeat("y", 100) + "\nz", 20, []line{{"", true}, {"z", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := bufio.NewReaderSize(strings.NewReader(tt.input), 16)
			var got []line
			for {
				l, tooLong, err := readLine(r, nil, tt.max)
				if err != nil {
					break
				}
				got = append(got, line{string(l), tooLong})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
		})
	}
}

// BenchmarkBulk enqueues 10,000 lines from a generated file into a private Redis.
func BenchmarkBulk(b *testing.B) {
	srv := redistest.Start(b)
	const lines = 10_000
	var sb strings.Builder
	for i := range lines {
		sb.WriteString(validLine(fmt.Sprintf("org-%d", i)) + "\n")
	}
	path := filepath.Join(b.TempDir(), "bench.ndjson")
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	iters := 0
	for b.Loop() {
		iters++
		var out, errb strings.Builder
		// A fresh run name per iteration: every line is new work, not a duplicate.
		code := run(b.Context(), []string{"--redis-url", srv.URL(), "bulk", path, "--run", fmt.Sprint("bench-", iters)},
			strings.NewReader(""), &out, &errb, nil)
		var sum bulkSummary
		if err := json.Unmarshal([]byte(out.String()), &sum); code != 0 || err != nil || sum.Enqueued != lines {
			b.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
		}
	}
	b.ReportMetric(float64(lines*iters)/b.Elapsed().Seconds(), "lines/s")
}

// TestBulkRefusesAmbiguousLines: lines encoding/json alone would read with
// another meaning are refused, each reported with its number and field; the
// rest go, with numbers exact.
func TestBulkRefusesAmbiguousLines(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	lines := []string{
		`{"id":"o1","integrated_account_id":"acc1","INTEGRATED_ACCOUNT_ID":"acc2","body":{}}`,
		"{\"id\":\"o\xff2\",\"integrated_account_id\":\"acc1\",\"body\":{}}",
		"{\"id\":\"o3\",\"integrated_account_id\":\"acc1\",\"body\":{\"name\":\"\xc3\"}}",
		`{"id":"o4","integrated_account_id":"acc1","body":{"a":1,"a":2}}`,
		`{"id":"o5","integrated_account_id":"*","body":{}}`,
		`{"id":"..","integrated_account_id":"acc1","body":{}}`,
		`{"id":"o7","integrated_account_id":"acc1","body":{},"idempotency_key":"k7 "}`,
		`{"id":"o8","integrated_account_id":"acc1","body":{},"idempotency_key":"k8","options":{"remote_query":{"n":12345678901234567890}}}`,
	}
	r := cli(t, f.srv, strings.Join(lines, "\n"), "bulk", "-")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q", r.code, r.stderr)
	}
	wantErr := []string{
		`line 1: INTEGRATED_ACCOUNT_ID: is not a field: names are case-sensitive; did you mean "integrated_account_id"?`,
		`line 2: id: the value is not valid UTF-8`,
		`line 3: body.name: the value is not valid UTF-8`,
		`line 4: body.a: appears twice in one object; give each field once`,
		`line 5: integrated_account_id: "*" is reserved (it names all accounts in ` + "`enqueue accounts resume`)",
		`line 6: id: ".." cannot be sent as a path segment`,
		`line 7: idempotency_key: has leading or trailing spaces, which a header value loses`,
	}
	if diff := cmp.Diff(wantErr, strings.Split(strings.TrimSpace(r.stderr), "\n")); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
	p, _ := f.payload(t, tasks.TaskID("acc1", "k8"))
	if got := string(p.Options.RemoteQuery["n"].(json.Number)); got != "12345678901234567890" {
		t.Errorf("remote_query n = %s, want 12345678901234567890", got)
	}
}
