package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/tasks"
)

func TestStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	u := tasks.Update{ID: "org1", IntegratedAccountID: "acc1", Body: json.RawMessage(`{"a":1}`), IdempotencyKey: "status-key"}
	if _, err := f.producer.Enqueue(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ref  string
	}{
		{"by task id", tasks.TaskID("acc1", "status-key")},
		{"by idempotency key", "status-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, f.srv, "", "status", tt.ref)
			if r.code != 0 {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			var got tasks.Status
			decode(t, r, &got)
			want := tasks.Status{TaskID: tasks.TaskID("acc1", "status-key"), IdempotencyKey: "status-key", Queue: tasks.DefaultQueue,
				State: tasks.StatusWaiting, Update: &u}
			if diff := cmp.Diff(want, got, cmp.FilterPath(func(p cmp.Path) bool {
				return p.Last().String() == ".NextAttemptAt" || p.Last().String() == ".Why"
			}, cmp.Ignore())); diff != "" {
				t.Errorf("status (-want +got):\n%s", diff)
			}
			if !strings.Contains(got.Why, "its account's turn") {
				t.Errorf("why = %q, want it waiting for its account's turn", got.Why)
			}
		})
	}
	t.Run("not found", func(t *testing.T) {
		t.Parallel()
		r := cli(t, f.srv, "", "status", "no-such-key")
		if r.code != 1 || !strings.Contains(r.stderr, `"no-such-key"`) {
			t.Errorf("exit %d stderr %q, want 1 naming the reference", r.code, r.stderr)
		}
	})
}

// TestStatusFollowsAdmission walks one update through admission and checks
// the state and the why status reports at each step.
func TestStatusFollowsAdmission(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	adm := f.store.Scheduler()
	enqueue := func(org, key string, opts ...tasks.EnqueueOption) string {
		t.Helper()
		got, err := f.producer.Enqueue(ctx, tasks.Update{ID: org, IntegratedAccountID: "acc1", Body: json.RawMessage(`{}`), IdempotencyKey: key}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return got.TaskID
	}
	first, second := enqueue("org1", "first"), enqueue("org1", "second")
	later := enqueue("org2", "later", tasks.At(time.Now().Add(time.Hour)))
	type view struct{ State, Why string }
	status := func(ref string) view {
		t.Helper()
		r := cli(t, f.srv, "", "status", ref, "--task-id")
		if r.code != 0 {
			t.Fatalf("status %s: exit %d, stderr %q", ref, r.code, r.stderr)
		}
		var got tasks.Status
		decode(t, r, &got)
		return view{string(got.State), got.Why}
	}
	check := func(step, ref string, wantState tasks.State, whyHas string) {
		t.Helper()
		got := status(ref)
		if diff := cmp.Diff(string(wantState), got.State); diff != "" || !strings.Contains(got.Why, whyHas) {
			t.Errorf("%s: state (-want +got):\n%s\nwhy %q, want it to contain %q", step, diff, got.Why, whyHas)
		}
	}
	check("enqueued", second, tasks.StatusWaiting, "behind 1 earlier update(s) of its organization")
	check("scheduled", later, tasks.StatusWaiting, "scheduled")

	tickets := f.deliver(t)
	if len(tickets) != 1 || tickets[0].ID != first {
		t.Fatalf("admitted %+v, want only %s (one update of an organization at a time)", tickets, first)
	}
	check("admitted", first, tasks.StatusPending, "")
	if _, ok, err := adm.Start(ctx, "", first, tickets[0].Gen, "test-worker"); err != nil || !ok {
		t.Fatalf("start %s: %v %v", first, ok, err)
	}
	check("started", first, tasks.StatusActive, "")

	// A 429 holds the account; the update goes back to its lane.
	if err := f.store.Accounts().Pause(ctx, "acc1", time.Now().Add(time.Hour), 429, "slow down"); err != nil {
		t.Fatal(err)
	}
	if ok, err := adm.Retry(ctx, "", first, tickets[0].Gen, time.Time{}); err != nil || !ok {
		t.Fatalf("retry %s: %v %v", first, ok, err)
	}
	check("held", first, tasks.StatusWaiting, "account rate limited until")
	if err := f.store.Accounts().Park(ctx, "acc1", 401, "credentials revoked"); err != nil {
		t.Fatal(err)
	}
	check("parked", first, tasks.StatusWaiting, "account parked (credentials revoked)")
	if err := f.store.Accounts().Park(ctx, tasks.AllAccounts, 401, "token rejected"); err != nil {
		t.Fatal(err)
	}
	check("all parked", first, tasks.StatusWaiting, "every account is parked (token rejected)")
	for _, a := range []string{tasks.AllAccounts, "acc1"} {
		if _, err := f.store.Accounts().Resume(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	check("resumed", first, tasks.StatusWaiting, "its account's turn")

	if _, err := adm.Finish(ctx, "", first, -1); err != nil {
		t.Fatal(err)
	}
	check("its predecessor finished", second, tasks.StatusWaiting, "its account's turn")
}

func TestStats(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, k := range []string{"s1", "s2"} {
		if _, err := f.producer.Enqueue(context.Background(), tasks.Update{ID: k, IntegratedAccountID: "acc1", Body: json.RawMessage(`{}`), IdempotencyKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	f.putDeadLetters(t, deadLetter("d1", "acc1", "o1", 422, "permanent", time.Now()))
	r := cli(t, f.srv, "", "stats")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var got struct {
		tasks.Stats
		Circuit circuit.State `json:"circuit"`
	}
	decode(t, r, &got)
	if got.Circuit.Open {
		t.Errorf("circuit reported open: %+v", got.Circuit)
	}
	if got.DeadLetters != 1 || got.DeadByStatus["422"] != 1 || got.DeadByClass["permanent"] != 1 {
		t.Errorf("dead letter stats = %+v, want one 422 permanent", got)
	}
	// Enqueued updates wait in admission: asynq has no queue until a worker admits one.
	if len(got.Queues) != 0 {
		t.Errorf("queues = %+v, want none before any update is admitted", got.Queues)
	}
	if got.Admission.Scheduled != 1 || got.Admission.Admitted != 0 || got.Admission.Running != 0 || got.Admission.Next.IsZero() {
		t.Errorf("admission = %+v, want acc1 scheduled with its 2 updates, none admitted or running", got.Admission)
	}

	// Once a worker admits them, asynq's queue has them pending.
	f.deliver(t)
	r = cli(t, f.srv, "", "stats")
	decode(t, r, &got)
	if len(got.Queues) != 1 || got.Queues[0].Queue != tasks.DefaultQueue || got.Queues[0].Pending != 2 || got.Admission.Admitted != 2 {
		t.Errorf("after admission: queues = %+v, admission %+v; want %s with 2 pending, 2 admitted", got.Queues, got.Admission, tasks.DefaultQueue)
	}
}

func TestAccounts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	if err := f.store.Accounts().Park(ctx, "parked-acc", 401, "token revoked"); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Accounts().Pause(ctx, "limited-acc", time.Now().Add(time.Hour), 429, "rate limited"); err != nil {
		t.Fatal(err)
	}
	list := func(t *testing.T) []string {
		t.Helper()
		r := cli(t, f.srv, "", "accounts", "list")
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		var names []string
		for _, h := range decodeLines[tasks.Hold](t, r) {
			names = append(names, h.Account+"/"+h.Kind)
		}
		return names
	}
	if diff := cmp.Diff([]string{"parked-acc/parked", "limited-acc/rate_limited"}, list(t)); diff != "" {
		t.Errorf("holds (-want +got):\n%s", diff)
	}
	type resumed struct {
		Account string `json:"account"`
		Resumed bool   `json:"resumed"`
	}
	for _, want := range []resumed{{"parked-acc", true}, {"parked-acc", false}} {
		r := cli(t, f.srv, "", "accounts", "resume", "parked-acc")
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		var got resumed
		decode(t, r, &got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("resume (-want +got):\n%s", diff)
		}
	}
	if diff := cmp.Diff([]string{"limited-acc/rate_limited"}, list(t)); diff != "" {
		t.Errorf("holds after resume (-want +got):\n%s", diff)
	}
}

func TestAccountsTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	// Reasons come from upstream answers; an account id with control
	// characters cannot be enqueued or parked through the store, but the
	// table must not trust what admission holds either.
	if err := f.store.Scheduler().Park(ctx, "acc\x1b[31m", "bad\ntoken", 401); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Accounts().Pause(ctx, "acc2", time.Now().Add(time.Hour), 429, "slow\x1b[0m down"); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	a := newApp(strings.NewReader(""), &out, &errb, nil)
	a.stdoutTTY = true
	if code := a.execute(context.Background(), []string{"--redis-url", f.srv.URL(), "accounts", "list"}); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ACCOUNT") || !strings.Contains(lines[1], "bad token") ||
		!strings.Contains(lines[2], "acc2") || strings.Contains(out.String(), "\x1b") {
		t.Errorf("table = %q, want a header, the park and the hold, control characters neutralised", out.String())
	}
}

func TestQueuePauseResume(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if _, err := f.producer.Enqueue(context.Background(), tasks.Update{ID: "o", IntegratedAccountID: "a", Body: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	f.deliver(t) // asynq knows the queue once a worker has admitted an update to it
	type answer struct {
		Queue   string `json:"queue"`
		Paused  bool   `json:"paused"`
		Changed bool   `json:"changed"`
	}
	steps := []struct {
		cmd  string
		want answer
	}{
		{"pause", answer{tasks.DefaultQueue, true, true}},
		{"pause", answer{tasks.DefaultQueue, true, false}},
		{"resume", answer{tasks.DefaultQueue, false, true}},
		{"resume", answer{tasks.DefaultQueue, false, false}},
	}
	for _, s := range steps {
		r := cli(t, f.srv, "", "queue", s.cmd, tasks.DefaultQueue)
		if r.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", s.cmd, r.code, r.stderr)
		}
		var got answer
		decode(t, r, &got)
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", s.cmd, diff)
		}
		qi, err := f.ins.GetQueueInfo(tasks.DefaultQueue)
		if err != nil {
			t.Fatal(err)
		}
		if qi.Paused != s.want.Paused {
			t.Errorf("after %s: asynq says paused=%v", s.cmd, qi.Paused)
		}
	}
}

func TestConnection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const dead = "redis://127.0.0.1:1/0"
	env := func(url string) func(string) string {
		return func(k string) string {
			if k == "REDIS_URL" {
				return url
			}
			return ""
		}
	}
	tests := []struct {
		name     string
		env      string
		args     []string
		wantCode int
		want     string
	}{
		{"flag unreachable", "", []string{"--redis-url", dead, "stats"}, 2, "cannot reach Redis at " + dead},
		{"env unreachable", dead, []string{"stats"}, 2, "the URL came from REDIS_URL"},
		{"flag beats env", dead, []string{"--redis-url", f.srv.URL(), "stats"}, 0, ""},
		{"env used", f.srv.URL(), []string{"stats"}, 0, ""},
		{"unparseable url", "", []string{"--redis-url", "http://example.com", "stats"}, 2, "expected one of"},
		{"bulk unreachable", "", []string{"--redis-url", dead, "bulk", "-"}, 2, "cannot reach Redis"},
		{"bad result ttl", "", []string{"--redis-url", f.srv.URL(), "--result-ttl", "0s", "stats"}, 2, "--result-ttl"},
		{"password url escaping rewrites", "", []string{"--redis-url", "redis://:S3cr3t!pw@127.0.0.1:1/0", "stats"}, 2, "cannot reach Redis at redis://:xxxxx@127.0.0.1:1/0"},
		{"env password url escaping rewrites", "redis://:S3cr3t!pw@127.0.0.1:1/0", []string{"stats"}, 2, "redis://:xxxxx@127.0.0.1:1/0"},
		{"password in url that does not parse", "", []string{"--redis-url", "redis://:S3cr3t!pw@127.0.0.1:notaport/0", "stats"}, 2, "invalid port (hidden) after host"},
		{"password with a slash", "", []string{"--redis-url", "redis://:S3cr3t/pw@127.0.0.1:1/0", "bulk", "-"}, 2, "percent-encoded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cliEnv(t, env(tt.env), "", tt.args...)
			if strings.Contains(r.stdout+r.stderr, "S3cr3t") {
				t.Errorf("the Redis password is shown:\nstdout %s\nstderr %s", r.stdout, r.stderr)
			}
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("exit %d stderr %q, want %d and %q", r.code, r.stderr, tt.wantCode, tt.want)
			}
			if tt.wantCode != 0 {
				var got struct {
					Error    string `json:"error"`
					ExitCode int    `json:"exit_code"`
				}
				decode(t, r, &got)
				if got.ExitCode != tt.wantCode || !strings.Contains(got.Error, tt.want) {
					t.Errorf("stdout = %+v, want the error and exit code", got)
				}
			}
		})
	}
}

// TestStatusKeysBelongToAccounts: two accounts can use one key; status by the
// key lists both and says how to pick, and --account picks.
func TestStatusKeysBelongToAccounts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, acct := range []string{"acc-A", "acc-B"} {
		r := cli(t, f.srv, "", "update", "--id", "org-"+acct, "--account", acct, "--body", `{"n":1}`, "--idempotency-key", "invoice-42")
		var got enqueued
		decode(t, r, &got)
		if r.code != 0 || got.Status != "enqueued" || got.TaskID != tasks.TaskID(acct, "invoice-42") {
			t.Fatalf("update of %s: exit %d, %+v, stderr %q; want its own update enqueued", acct, r.code, got, r.stderr)
		}
	}
	r := cli(t, f.srv, "", "status", "invoice-42")
	if r.code != 1 || !strings.Contains(r.stderr, "--account") {
		t.Errorf("status of a shared key: exit %d, stderr %q; want 1 and a hint at --account", r.code, r.stderr)
	}
	var amb struct {
		Status  string        `json:"status"`
		Ref     string        `json:"ref"`
		Matches []tasks.Match `json:"matches"`
	}
	decode(t, r, &amb)
	want := []tasks.Match{
		{TaskID: tasks.TaskID("acc-A", "invoice-42"), Account: "acc-A", MatchedAs: "idempotency_key"},
		{TaskID: tasks.TaskID("acc-B", "invoice-42"), Account: "acc-B", MatchedAs: "idempotency_key"},
	}
	sortMatches := cmpopts.SortSlices(func(a, b tasks.Match) bool { return a.TaskID < b.TaskID })
	if diff := cmp.Diff(want, amb.Matches, sortMatches); diff != "" || amb.Status != "ambiguous" {
		t.Errorf("ambiguous output %q (-want +got):\n%s", amb.Status, diff)
	}
	for _, acct := range []string{"acc-A", "acc-B"} {
		r := cli(t, f.srv, "", "status", "invoice-42", "--account", acct)
		var got tasks.Status
		decode(t, r, &got)
		if r.code != 0 || got.TaskID != tasks.TaskID(acct, "invoice-42") || got.Update == nil || got.Update.ID != "org-"+acct {
			t.Errorf("status --account %s: exit %d, %+v", acct, r.code, got)
		}
	}
}

// TestStatusKeyOfTaskIDForm: a key that looks like a task id is still found
// as a key, and a reference that is both is reported until --key or --task-id says.
func TestStatusKeyOfTaskIDForm(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	enqueue := func(account, key string) string {
		t.Helper()
		got, err := f.producer.Enqueue(ctx, tasks.Update{ID: "o", IntegratedAccountID: account, Body: json.RawMessage(`{}`), IdempotencyKey: key})
		if err != nil {
			t.Fatal(err)
		}
		return got.TaskID
	}
	lookalike := "u_00112233445566778899aabbccddeeff"
	byLookalike := enqueue("acc1", lookalike)
	plain := enqueue("acc2", "plain")
	both := enqueue("acc3", plain) // its key is the other update's task id
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantID   string
	}{
		{"key of task id form", []string{lookalike}, 0, byLookalike},
		{"one's task id, another's key", []string{plain}, 1, ""},
		{"--task-id", []string{plain, "--task-id"}, 0, plain},
		{"--key", []string{plain, "--key"}, 0, both},
		{"--account", []string{plain, "--account", "acc3"}, 0, both},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, f.srv, "", append([]string{"status"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tt.wantCode, r.stderr)
			}
			if tt.wantCode != 0 {
				if !strings.Contains(r.stdout, `"ambiguous"`) || !strings.Contains(r.stderr, "--task-id") {
					t.Errorf("stdout %q stderr %q; want the matches and a hint at --key/--task-id", r.stdout, r.stderr)
				}
				return
			}
			var got tasks.Status
			decode(t, r, &got)
			if diff := cmp.Diff(tt.wantID, got.TaskID); diff != "" {
				t.Errorf("task id (-want +got):\n%s", diff)
			}
		})
	}
	if r := cli(t, f.srv, "", "status", plain, "--task-id", "--key"); r.code != 2 {
		t.Errorf("--task-id with --key: exit %d, want 2", r.code)
	}
}
