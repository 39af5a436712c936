package main

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/tasks"
)

// dlqFixture stores five dead letters an hour apart, the newest 30 minutes
// old, plus one malformed record.
func dlqFixture(t *testing.T) (*fixture, []tasks.DeadLetter) {
	t.Helper()
	f := newFixture(t)
	now := time.Now().Truncate(time.Second)
	ds := []tasks.DeadLetter{
		deadLetter("k1", "acc1", "org1", 422, "permanent", now.Add(-270*time.Minute)),
		deadLetter("k2", "acc1", "org2", 404, "permanent", now.Add(-210*time.Minute)),
		deadLetter("k3", "acc2", "org1", 0, tasks.ClassExhausted, now.Add(-150*time.Minute)),
		deadLetter("k4", "acc2", "org3", 422, "permanent", now.Add(-90*time.Minute)),
		deadLetter("k5", "acc3", "org4", 0, tasks.ClassExpired, now.Add(-30*time.Minute)),
	}
	malformed := tasks.DeadLetter{TaskID: "u_0123456789abcdef0123456789abcdef", Queue: tasks.DefaultQueue, RawPayload: "{broken",
		Class: tasks.ClassMalformed, Reason: "payload is not JSON", DeadAt: now.Add(-300 * time.Minute).UTC()}
	f.putDeadLetters(t, append([]tasks.DeadLetter{malformed}, ds...)...)
	return f, append([]tasks.DeadLetter{malformed}, ds...)
}

// fixtureAccount is the account of each key of dlqFixture.
var fixtureAccount = map[string]string{"k1": "acc1", "k2": "acc1", "k3": "acc2", "k4": "acc2", "k5": "acc3"}

// idOf is the task id of dlqFixture's dead letter with key k.
func idOf(k string) string { return tasks.TaskID(fixtureAccount[k], k) }

// ids lists the task ids of the dead letters with these keys.
func ids(keys ...string) []string {
	out := []string{}
	for _, k := range keys {
		out = append(out, idOf(k))
	}
	return out
}

func TestDLQList(t *testing.T) {
	t.Parallel()
	f, ds := dlqFixture(t)
	malformed := ds[0].TaskID
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"all, oldest first", nil, append([]string{malformed}, ids("k1", "k2", "k3", "k4", "k5")...)},
		{"account", []string{"--account", "acc2"}, ids("k3", "k4")},
		{"org", []string{"--org", "org1"}, ids("k1", "k3")},
		{"status", []string{"--status", "422"}, ids("k1", "k4")},
		{"class", []string{"--class", string(tasks.ClassExpired)}, ids("k5")},
		{"since duration", []string{"--since", "2h"}, ids("k4", "k5")},
		{"since days", []string{"--since", "1d"}, append([]string{malformed}, ids("k1", "k2", "k3", "k4", "k5")...)},
		{"since and until RFC3339", []string{"--since", ds[2].DeadAt.Format(time.RFC3339), "--until", ds[4].DeadAt.Format(time.RFC3339)}, ids("k2", "k3")},
		{"until duration", []string{"--until", "4h"}, append([]string{malformed}, ids("k1")...)},
		{"limit", []string{"--limit", "2", "--class", "permanent"}, ids("k1", "k2")},
		{"combined", []string{"--account", "acc1", "--status", "404", "--org", "org2"}, ids("k2")},
		{"nothing matches", []string{"--account", "nobody"}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var r result
			if len(tt.want) == 0 {
				var out, errb strings.Builder
				code := run(context.Background(), append([]string{"--redis-url", f.srv.URL(), "dlq", "list"}, tt.args...),
					strings.NewReader(""), &out, &errb, nil)
				r = result{code, out.String(), errb.String()}
			} else {
				r = cli(t, f.srv, "", append([]string{"dlq", "list"}, tt.args...)...)
			}
			if r.code != 0 {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			got := []string{}
			for _, d := range decodeLines[tasks.DeadLetter](t, r) {
				got = append(got, d.TaskID)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("task ids (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("bad since", func(t *testing.T) {
		t.Parallel()
		r := cli(t, f.srv, "", "dlq", "list", "--since", "yesterday")
		if r.code != 2 || !strings.Contains(r.stderr, "--since") {
			t.Errorf("exit %d stderr %q, want 2 naming --since", r.code, r.stderr)
		}
	})
}

// TestDLQMovesTheSingleSlotLayout: dead letters an older worker wrote in the
// single-slot layout (one hash, one index) are listed, oldest first, once the
// command has moved them, which it says on stderr; the next command moves
// nothing and says nothing.
func TestDLQMovesTheSingleSlotLayout(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now().UTC()
	older := []tasks.DeadLetter{
		deadLetter("old-2", "acc1", "org1", 422, "permanent", now.Add(-2*time.Hour)),
		deadLetter("old-1", "acc1", "org2", 404, "permanent", now.Add(-3*time.Hour)),
	}
	for _, d := range older {
		b, _ := json.Marshal(d)
		f.rdb.HSet(ctx, "orgsync:{dlq}:records", d.TaskID, b)
		f.rdb.ZAdd(ctx, "orgsync:{dlq}:index", redis.Z{Score: float64(d.DeadAt.UnixMilli()), Member: d.TaskID})
	}
	newer := deadLetter("new", "acc1", "org3", 422, "permanent", now.Add(-time.Hour))
	f.putDeadLetters(t, newer)
	r := cli(t, f.srv, "", "dlq", "list")
	if r.code != 0 || !strings.Contains(r.stderr, "moved 2 dead letters") {
		t.Fatalf("exit %d, stderr %q; want 0 and the move said", r.code, r.stderr)
	}
	var got []string
	for _, d := range decodeLines[tasks.DeadLetter](t, r) {
		got = append(got, d.TaskID)
	}
	if want := []string{older[1].TaskID, older[0].TaskID, newer.TaskID}; !slices.Equal(got, want) {
		t.Errorf("listed %v, want %v", got, want)
	}
	if n := f.rdb.Exists(ctx, "orgsync:{dlq}:records", "orgsync:{dlq}:index").Val(); n != 0 {
		t.Errorf("%d keys of the single-slot layout left", n)
	}
	if r := cli(t, f.srv, "", "dlq", "list"); r.code != 0 || r.stderr != "" {
		t.Errorf("second list: exit %d, stderr %q; want 0 and nothing said", r.code, r.stderr)
	}
}

func TestDLQListTable(t *testing.T) {
	t.Parallel()
	f, _ := dlqFixture(t)
	var out, errb strings.Builder
	a := newApp(strings.NewReader(""), &out, &errb, nil)
	a.stdoutTTY = true
	if code := a.execute(context.Background(), []string{"--redis-url", f.srv.URL(), "dlq", "list", "--account", "acc1"}); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TASK ID") || !strings.Contains(lines[1], idOf("k1")) ||
		!strings.Contains(lines[1], "422") || !strings.Contains(lines[1], "upstream said no") {
		t.Errorf("table =\n%s\nwant a header and two rows", out.String())
	}
}

// replaySummaryOf runs dlq replay and decodes its summary.
func replaySummaryOf(t *testing.T, f *fixture, wantCode int, args ...string) (replaySummary, result) {
	t.Helper()
	r := cli(t, f.srv, "", append([]string{"dlq", "replay"}, args...)...)
	if r.code != wantCode {
		t.Fatalf("exit %d, want %d; stderr %q", r.code, wantCode, r.stderr)
	}
	var got replaySummary
	decode(t, r, &got)
	return got, r
}

func TestDLQReplay(t *testing.T) {
	t.Parallel()
	t.Run("dry run changes nothing", func(t *testing.T) {
		t.Parallel()
		f, ds := dlqFixture(t)
		got, _ := replaySummaryOf(t, f, 0, "--all", "--dry-run")
		if diff := cmp.Diff(replaySummary{WouldReplay: 5, Skipped: 1}, got); diff != "" {
			t.Errorf("summary (-want +got):\n%s", diff)
		}
		if n := f.held(t, "acc1", "acc2", "acc3"); n != 0 {
			t.Errorf("admission holds %d updates, want 0", n)
		}
		if n := len(f.deadIDs(t)); n != len(ds) {
			t.Errorf("%d dead letters left, want %d", n, len(ds))
		}
	})
	t.Run("by id", func(t *testing.T) {
		t.Parallel()
		f, _ := dlqFixture(t)
		got, r := replaySummaryOf(t, f, 0, idOf("k2"), "--verbose", "--max-retry", "7")
		if diff := cmp.Diff(replaySummary{Replayed: 1}, got); diff != "" {
			t.Errorf("summary (-want +got):\n%s", diff)
		}
		if !strings.Contains(r.stderr, idOf("k2")+": replayed") {
			t.Errorf("verbose stderr %q does not list the record", r.stderr)
		}
		if n := f.held(t, "acc1", "acc2", "acc3"); n != 1 {
			t.Errorf("admission holds %d updates, want the one replayed", n)
		}
		p, st := f.payload(t, idOf("k2"))
		if st.State != "waiting" || p.IdempotencyKey != "k2" || p.Replays != 1 || p.MaxRetry != 7 {
			t.Errorf("replayed update: state %q key %q replays %d max retry %d; want waiting, k2, 1, 7", st.State, p.IdempotencyKey, p.Replays, p.MaxRetry)
		}
		if slices.Contains(f.deadIDs(t), idOf("k2")) {
			t.Errorf("dead letter of k2 is still there")
		}
	})
	t.Run("all with filters", func(t *testing.T) {
		t.Parallel()
		f, ds := dlqFixture(t)
		got, _ := replaySummaryOf(t, f, 0, "--all", "--status", "422", "--rate", "1000/s")
		if diff := cmp.Diff(replaySummary{Replayed: 2}, got); diff != "" {
			t.Errorf("summary (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(ids("k1", "k4"), f.inAdmission(t, ids("k1", "k4")...)); diff != "" {
			t.Errorf("in admission (-want +got):\n%s", diff)
		}
		if n := f.held(t, "acc1", "acc2", "acc3"); n != 2 {
			t.Errorf("admission holds %d updates, want the two replayed", n)
		}
		if diff := cmp.Diff(append([]string{ds[0].TaskID}, ids("k2", "k3", "k5")...), f.deadIDs(t)); diff != "" {
			t.Errorf("dead letters left (-want +got):\n%s", diff)
		}
	})
	t.Run("malformed is skipped", func(t *testing.T) {
		t.Parallel()
		f, ds := dlqFixture(t)
		got, r := replaySummaryOf(t, f, 0, ds[0].TaskID)
		if diff := cmp.Diff(replaySummary{Skipped: 1}, got); diff != "" {
			t.Errorf("summary (-want +got):\n%s", diff)
		}
		if !strings.Contains(r.stderr, "--verbose") {
			t.Errorf("stderr %q does not point at --verbose", r.stderr)
		}
	})
	t.Run("unknown id", func(t *testing.T) {
		t.Parallel()
		f, _ := dlqFixture(t)
		got, r := replaySummaryOf(t, f, 1, "u_ffffffffffffffffffffffffffffffff", idOf("k1"))
		if diff := cmp.Diff(replaySummary{Replayed: 1}, got); diff != "" {
			t.Errorf("summary (-want +got):\n%s", diff)
		}
		if !strings.Contains(r.stderr, "u_ffffffffffffffffffffffffffffffff: no dead letter") {
			t.Errorf("stderr %q does not name the unknown id", r.stderr)
		}
	})
	t.Run("usage", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{{}, {"--all", "u_1"}, {"--all", "--rate", "fast"}} {
			r := cli(t, nil, "", append([]string{"dlq", "replay"}, args...)...)
			if r.code != 2 {
				t.Errorf("dlq replay %v: exit %d, want 2; stderr %q", args, r.code, r.stderr)
			}
		}
	})
}

func TestDLQExportPurgeBulkRoundTrip(t *testing.T) {
	t.Parallel()
	f, ds := dlqFixture(t)
	exp := cli(t, f.srv, "", "dlq", "export", "--account", "acc1")
	if exp.code != 0 {
		t.Fatalf("export: exit %d, stderr %q", exp.code, exp.stderr)
	}
	var keys []string
	for _, u := range decodeLines[tasks.Update](t, exp) {
		keys = append(keys, u.IdempotencyKey)
	}
	if diff := cmp.Diff([]string{"k1", "k2"}, keys); diff != "" {
		t.Errorf("exported keys (-want +got):\n%s", diff)
	}
	// Everything, so the malformed record is skipped with a note.
	all := cli(t, f.srv, "", "dlq", "export")
	if n := len(decodeLines[tasks.Update](t, all)); n != 5 || !strings.Contains(all.stderr, ds[0].TaskID+": skipped: malformed") {
		t.Errorf("export of all: %d lines, stderr %q; want 5 and a note on the malformed one", n, all.stderr)
	}

	// While the dead letters exist their keys are taken.
	dup := cli(t, f.srv, exp.stdout, "bulk")
	var sum bulkSummary
	decode(t, dup, &sum)
	if diff := cmp.Diff(bulkSummary{Read: 2, Duplicates: 2}, sum, ignoreTiming); diff != "" {
		t.Errorf("bulk before purge (-want +got):\n%s", diff)
	}

	purge := cli(t, f.srv, "", "dlq", "purge", "--all", "--account", "acc1", "--yes")
	if purge.code != 0 || strings.TrimSpace(purge.stdout) != `{"purged":2}` {
		t.Fatalf("purge: exit %d stdout %q stderr %q", purge.code, purge.stdout, purge.stderr)
	}
	again := cli(t, f.srv, exp.stdout, "bulk", "-", "--run", "keyed-lines")
	decode(t, again, &sum)
	if diff := cmp.Diff(bulkSummary{Run: "keyed-lines", Read: 2, Enqueued: 2}, sum, ignoreTiming); diff != "" {
		t.Errorf("bulk after purge (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(ids("k1", "k2"), f.inAdmission(t, ids("k1", "k2")...)); diff != "" {
		t.Errorf("re-enqueued task ids (-want +got):\n%s", diff)
	}
	if n := f.held(t, "acc1"); n != 2 {
		t.Errorf("admission holds %d updates of acc1, want the two re-enqueued", n)
	}
}

func TestDLQPurge(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantPurged int
		wantLeft   int
	}{
		{"declined", []string{"--all"}, "n\n", 1, 0, 6},
		{"no answer", []string{"--all"}, "", 1, 0, 6},
		{"confirmed", []string{"--all", "--class", "permanent"}, "y\n", 0, 3, 3},
		{"confirmed yes", []string{"--all"}, "YES\n", 0, 6, 0},
		{"--yes does not ask", []string{"--all", "--account", "acc2", "--yes"}, "", 0, 2, 4},
		{"by id", []string{idOf("k1"), idOf("k5"), "--yes"}, "", 0, 2, 4},
		{"by unknown id", []string{"u_ffffffffffffffffffffffffffffffff", "--yes"}, "", 1, 0, 6},
		{"nothing matches", []string{"--all", "--account", "nobody"}, "", 0, 0, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, _ := dlqFixture(t)
			r := cli(t, f.srv, tt.stdin, append([]string{"dlq", "purge"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tt.wantCode, r.stderr)
			}
			var got struct {
				Purged int `json:"purged"`
			}
			decode(t, r, &got)
			if got.Purged != tt.wantPurged {
				t.Errorf("purged %d, want %d", got.Purged, tt.wantPurged)
			}
			if n := len(f.deadIDs(t)); n != tt.wantLeft {
				t.Errorf("%d dead letters left, want %d", n, tt.wantLeft)
			}
			asked := strings.Contains(r.stderr, "dead letters? [y/N]")
			if wantAsk := tt.stdin != "" || tt.name == "no answer"; asked != wantAsk {
				t.Errorf("asked = %v, want %v (stderr %q)", asked, wantAsk, r.stderr)
			}
		})
	}
	t.Run("bare purge", func(t *testing.T) {
		t.Parallel()
		r := cli(t, nil, "", "dlq", "purge", "--yes")
		if r.code != 2 || !strings.Contains(r.stderr, "--all") {
			t.Errorf("exit %d stderr %q, want 2 and a hint at --all", r.code, r.stderr)
		}
	})
}

func TestPurgeDropsArchivedCopy(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	u := tasks.Update{ID: "o", IntegratedAccountID: "a", Body: []byte(`{}`), IdempotencyKey: "arch"}
	if _, err := f.producer.Enqueue(ctx, u); err != nil {
		t.Fatal(err)
	}
	// As the worker leaves a dead update: admitted and handed to asynq under
	// its run's task id, archived there as a mirror of the dead letter, and
	// gone from admission.
	tickets := f.deliver(t)
	if len(tickets) != 1 {
		t.Fatalf("admitted %d updates, want 1", len(tickets))
	}
	runID := tasks.RunTaskID(tickets[0].ID, tickets[0].Gen)
	if err := f.ins.ArchiveTask(tasks.DefaultQueue, runID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Scheduler().Finish(ctx, "", tickets[0].ID, tickets[0].Gen); err != nil {
		t.Fatal(err)
	}
	d := deadLetter("arch", "a", "o", 422, "permanent", time.Now())
	d.QueueTaskID = runID
	f.putDeadLetters(t, d)
	if r := cli(t, f.srv, "", "dlq", "purge", tasks.TaskID("a", "arch"), "--yes"); r.code != 0 {
		t.Fatalf("purge: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := f.ins.GetTaskInfo(tasks.DefaultQueue, runID); err == nil {
		t.Errorf("the archived copy is still in asynq; the queue UI would still list it as dead")
	}
	if _, err := f.producer.Enqueue(ctx, u); err != nil {
		t.Errorf("enqueue under the purged key: %v", err)
	}
}

// TestDLQExportEditBulk: export a dead letter, fix its body in an "editor",
// purge it, and enqueue the fixed line with bulk: the new task carries the
// fixed body under the original key.
func TestDLQExportEditBulk(t *testing.T) {
	t.Parallel()
	f, _ := dlqFixture(t)
	exp := cli(t, f.srv, "", "dlq", "export", "--org", "org2")
	lines := decodeLines[tasks.Update](t, exp)
	if len(lines) != 1 || lines[0].IdempotencyKey != "k2" {
		t.Fatalf("export --org org2 = %+v, want the k2 update", lines)
	}
	edited := strings.Replace(exp.stdout, string(lines[0].Body), `{"remote_data":{"tier":"fixed"}}`, 1)
	if edited == exp.stdout {
		t.Fatalf("could not edit the exported line %q", exp.stdout)
	}
	if r := cli(t, f.srv, "", "dlq", "purge", idOf("k2"), "--yes"); r.code != 0 {
		t.Fatalf("purge: exit %d, stderr %q", r.code, r.stderr)
	}
	r := cli(t, f.srv, edited, "bulk", "-")
	if r.code != 0 {
		t.Fatalf("bulk of the edited line: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	p, _ := f.payload(t, idOf("k2"))
	if string(p.Body) != `{"remote_data":{"tier":"fixed"}}` || p.IdempotencyKey != "k2" || p.ID != "org2" {
		t.Errorf("re-enqueued payload = %+v, want the fixed body under key k2", p)
	}
}
