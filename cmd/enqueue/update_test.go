package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient"
)

// enqueued is what `update` prints.
type enqueued struct {
	TaskID         string `json:"task_id"`
	IdempotencyKey string `json:"idempotency_key"`
	Queue          string `json:"queue"`
	Status         string `json:"status"`
}

func TestUpdateHappyPath(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bodyFile := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(bodyFile, []byte("{\n  \"name\": \"Acme\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := cli(t, f.srv, "", "update", "--id", "org1", "--account", "acc1", "--body-file", bodyFile,
		"--format", "raw", "--ignore-remote-data", "--exclude-field", "licenses", "--exclude-field", "seats",
		"--remote-query", "foo=bar", "--remote-query", "x=1=2", "--idempotency-key", "k-1", "--max-retry", "3")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var got enqueued
	decode(t, r, &got)
	want := enqueued{TaskID: tasks.TaskID("acc1", "k-1"), IdempotencyKey: "k-1", Queue: tasks.DefaultQueue, Status: "enqueued"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
	// The producer puts it in admission, where it waits for a worker to
	// admit it: asynq sees nothing yet.
	p, st := f.payload(t, got.TaskID)
	if st.State != "waiting" || !st.NotBefore.IsZero() {
		t.Errorf("admission state %q, not before %v; want waiting, due now", st.State, st.NotBefore)
	}
	if n := f.queueSize(t, tasks.DefaultQueue); n != 0 {
		t.Errorf("asynq queue holds %d tasks before any worker admitted one, want 0", n)
	}
	wantU := tasks.Update{ID: "org1", IntegratedAccountID: "acc1", Body: []byte(`{"name":"Acme"}`), IdempotencyKey: "k-1",
		Options: trutoclient.Options{ResponseFormat: "raw", IgnoreRemoteData: true, ExcludeFields: []string{"licenses", "seats"},
			RemoteQuery: map[string]any{"foo": "bar", "x": "1=2"}}}
	if diff := cmp.Diff(wantU, p.Update); diff != "" {
		t.Errorf("queued update (-want +got):\n%s", diff)
	}
	if p.MaxRetry != 3 {
		t.Errorf("max retry = %d, want 3", p.MaxRetry)
	}
}

func TestUpdateGeneratesKeyAndSchedules(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	atTime := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	at := atTime.Format(time.RFC3339)
	r := cli(t, f.srv, `{"a": 1}`, "update", "--id", "org1", "--account", "acc1", "--body-file", "-", "--at", at)
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var got enqueued
	decode(t, r, &got)
	if got.IdempotencyKey == "" || got.TaskID != tasks.TaskID("acc1", got.IdempotencyKey) || got.Status != "enqueued" {
		t.Errorf("output = %+v, want a generated key and its task id", got)
	}
	p, st := f.payload(t, got.TaskID)
	if st.State != "waiting" || !st.NotBefore.Equal(atTime) {
		t.Errorf("admission state %q, not before %v; want waiting until %v", st.State, st.NotBefore, atTime)
	}
	if string(p.Body) != `{"a":1}` {
		t.Errorf("body = %s, want the stdin body compacted", p.Body)
	}
}

func TestUpdateDuplicate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	args := []string{"update", "--id", "org1", "--account", "acc1", "--body", `{"a":1}`, "--idempotency-key", "same"}
	first := cli(t, f.srv, "", args...)
	second := cli(t, f.srv, "", args...)
	for i, r := range []result{first, second} {
		if r.code != 0 {
			t.Fatalf("run %d: exit %d, stderr %q", i+1, r.code, r.stderr)
		}
	}
	var got enqueued
	decode(t, second, &got)
	want := enqueued{TaskID: tasks.TaskID("acc1", "same"), IdempotencyKey: "same", Queue: tasks.DefaultQueue, Status: "duplicate"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("second output (-want +got):\n%s", diff)
	}
	if !strings.Contains(second.stderr, "duplicate") {
		t.Errorf("stderr %q does not say duplicate", second.stderr)
	}
	if n := f.held(t, "acc1"); n != 1 {
		t.Errorf("admission holds %d updates of acc1, want 1", n)
	}
}

func TestUpdateInvalid(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	big := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(big, []byte(`{"a":"`+strings.Repeat("x", tasks.MaxBodyBytes)+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"update", "--id", "org1", "--account", "acc1"}
	tests := []struct {
		name      string
		args      []string
		wantField string
		wantFlag  string
	}{
		{"missing body", base, "body", "--body"},
		{"body not an object", append(base[:len(base):len(base)], "--body", "[1,2]"), "body", "--body"},
		{"body not JSON", append(base[:len(base):len(base)], "--body", "{oops"), "body", "--body"},
		{"body too big", append(base[:len(base):len(base)], "--body-file", big), "body", "--body"},
		{"missing id", []string{"update", "--account", "acc1", "--body", "{}"}, "id", "--id"},
		{"missing account", []string{"update", "--id", "o", "--body", "{}"}, "integrated_account_id", "--account"},
		{"bad format", append(base[:len(base):len(base)], "--body", "{}", "--format", "xml"), "options", "--format"},
		{"bad key", append(base[:len(base):len(base)], "--body", "{}", "--idempotency-key", "tab\there"), "idempotency_key", "--idempotency-key"},
		{"negative max retry", append(base[:len(base):len(base)], "--body", "{}", "--max-retry", "-1"), "max_retry", "--max-retry"},
		{"reserved account", []string{"update", "--id", "o", "--account", "*", "--body", "{}"}, "integrated_account_id", "--account"},
		{"dot-dot id", []string{"update", "--id", "..", "--account", "acc1", "--body", "{}"}, "id", "--id"},
		{"dot id", []string{"update", "--id", ".", "--account", "acc1", "--body", "{}"}, "id", "--id"},
		{"key with a trailing space", append(base[:len(base):len(base)], "--body", "{}", "--idempotency-key", "k "), "idempotency_key", "--idempotency-key"},
		{"key with a leading space", append(base[:len(base):len(base)], "--body", "{}", "--idempotency-key", " k"), "idempotency_key", "--idempotency-key"},
		{"body key twice", append(base[:len(base):len(base)], "--body", `{"a":{"b":1,"b":2}}`), "body.a.b", "--body"},
		{"body invalid UTF-8", append(base[:len(base):len(base)], "--body", "{\"a\":\"\xff\"}"), "body.a", "--body"},
		{"id invalid UTF-8", []string{"update", "--id", "o\xff", "--account", "acc1", "--body", "{}"}, "id", "--id"},
		{"remote query invalid UTF-8", append(base[:len(base):len(base)], "--body", "{}", "--remote-query", "k=\xff"), "options.remote_query.k", "--remote-query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, f.srv, "", tt.args...)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1; stderr %q", r.code, r.stderr)
			}
			var got struct{ Status, Field, Reason string }
			decode(t, r, &got)
			if got.Status != "invalid" || got.Field != tt.wantField || got.Reason == "" {
				t.Errorf("stdout = %+v, want status invalid, field %s and a reason", got, tt.wantField)
			}
			if !strings.Contains(r.stderr, tt.wantField) || !strings.Contains(r.stderr, tt.wantFlag) {
				t.Errorf("stderr %q does not name field %s and flag %s", r.stderr, tt.wantField, tt.wantFlag)
			}
		})
	}
	t.Cleanup(func() {
		if n := f.held(t, "acc1"); n != 0 {
			t.Errorf("admission holds %d updates after invalid updates, want 0", n)
		}
	})
}

func TestUpdateUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad remote query", []string{"update", "--id", "o", "--account", "a", "--body", "{}", "--remote-query", "novalue"}, "key=value"},
		{"bad at", []string{"update", "--id", "o", "--account", "a", "--body", "{}", "--at", "tomorrow"}, "RFC3339"},
		{"body and body file", []string{"update", "--body", "{}", "--body-file", "x"}, "body"},
		{"missing body file", []string{"update", "--id", "o", "--account", "a", "--body-file", "/nonexistent/b.json"}, "--body-file"},
		{"unknown flag", []string{"update", "--bogus"}, "unknown flag"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"bare group", []string{"dlq"}, "needs a command"},
		{"unknown subcommand", []string{"accounts", "frob"}, "unknown command"},
		{"no command", nil, "needs a command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, nil, "", tt.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.want)
			}
		})
	}
}
