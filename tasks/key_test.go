package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
)

func TestPairDigests(t *testing.T) {
	t.Parallel()
	type ids struct{ Task, Upstream string }
	of := func(account, key string) ids { return ids{TaskID(account, key), UpstreamKey(account, key)} }
	pairs := [][2]string{{"A", "invoice-42"}, {"B", "invoice-42"}, {"ab", "c"}, {"a", "bc"}, {"A", "invoice-43"}}
	seen := map[string][2]string{}
	for _, p := range pairs {
		got := of(p[0], p[1])
		if diff := cmp.Diff(got, of(p[0], p[1])); diff != "" {
			t.Errorf("%q not stable (-first +second):\n%s", p, diff)
		}
		for _, v := range []string{got.Task, got.Upstream} {
			if prev, ok := seen[v]; ok {
				t.Errorf("%q and %q share %s", prev, p, v)
			}
			seen[v] = p
		}
		if !isTaskIDForm(got.Task) {
			t.Errorf("TaskID%q = %q, not of task id form", p, got.Task)
		}
		if err := ValidateKey(got.Upstream); err != nil || len(got.Upstream) != 68 {
			t.Errorf("UpstreamKey%q = %q (%d bytes): %v; want a valid 68-byte key", p, got.Upstream, len(got.Upstream), err)
		}
	}
	if TaskID("A", "k") == LegacyTaskID("k") {
		t.Error("the task id of a version-2 update equals the legacy id of its key")
	}
}

// TestKeysBelongToAccounts: two accounts may use the same key; each update
// is enqueued, applied under its own Idempotency-Key (the same on every
// attempt), and found by key with its account.
func TestKeysBelongToAccounts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 500}) // A's first try fails, then everything succeeds
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	ctx := context.Background()
	var tasksByAccount []*asynq.Task
	for _, acct := range []string{"acct-A", "acct-B"} {
		u := sampleUpdate(acct)
		u.IdempotencyKey = "invoice-42"
		tasksByAccount = append(tasksByAccount, e.enqueueTask(p, u))
	}
	if err := e.run(tasksByAccount[0]); !errors.Is(err, asynq.RevokeTask) || e.lastEvent().Outcome != OutcomeRetry {
		t.Fatalf("A's first run: %v, want a retry", err)
	}
	for _, task := range tasksByAccount {
		if err := e.run(task); err != nil {
			t.Fatal(err)
		}
	}
	keyA, keyB := UpstreamKey("acct-A", "invoice-42"), UpstreamKey("acct-B", "invoice-42")
	if diff := cmp.Diff([]string{keyA, keyA, keyB}, e.up.keys); diff != "" {
		t.Errorf("Idempotency-Keys sent (-want +got):\n%s", diff)
	}

	_, err := e.store.Operator().Status(ctx, "invoice-42", nil)
	var ae *AmbiguousError
	if !errors.As(err, &ae) || !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("status by a key two accounts used: %v, want an *AmbiguousError", err)
	}
	want := []Match{{TaskID("acct-A", "invoice-42"), "acct-A", "idempotency_key"}, {TaskID("acct-B", "invoice-42"), "acct-B", "idempotency_key"}}
	if diff := cmp.Diff(want, ae.Matches, cmpSortMatches); diff != "" {
		t.Errorf("matches (-want +got):\n%s", diff)
	}
	for _, acct := range []string{"acct-A", "acct-B"} {
		st, err := e.store.Operator().Find(ctx, Lookup{Ref: "invoice-42", Account: acct}, nil)
		if err != nil || st.TaskID != TaskID(acct, "invoice-42") || st.State != StatusCompleted || st.Result == nil {
			t.Errorf("find invoice-42 of %s = %s %s, %v; want its own, completed", acct, st.TaskID, st.State, err)
		}
	}
	// A second enqueue is a duplicate within its account only.
	u := sampleUpdate("acct-A")
	u.IdempotencyKey = "invoice-42"
	if _, err := p.Enqueue(ctx, u); !errors.Is(err, ErrDuplicate) {
		t.Errorf("A again: %v, want a duplicate", err)
	}
	u.IntegratedAccountID = "acct-C"
	if got, err := p.Enqueue(ctx, u); err != nil || got.Status != "enqueued" {
		t.Errorf("C with A's key: %+v, %v; want enqueued", got, err)
	}
}

var cmpSortMatches = cmp.Transformer("sort", func(ms []Match) []Match {
	out := append([]Match(nil), ms...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].TaskID < out[i].TaskID {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

// legacyTask puts a version-1 payload on the queue as a producer before
// per-account keys did: under the key's legacy id.
func legacyTask(t *testing.T, e *env, account, key string) *asynq.Task {
	t.Helper()
	u := sampleUpdate(account)
	u.IdempotencyKey = key
	b, err := EncodePayload(Payload{Version: payloadV1, Update: u, EnqueuedAt: e.now})
	if err != nil {
		t.Fatal(err)
	}
	c := asynq.NewClientFromRedisClient(e.store.rdb)
	if _, err := c.Enqueue(asynq.NewTask(TypeUpdateOrganization, b), asynq.TaskID(LegacyTaskID(key)), asynq.Queue(DefaultQueue)); err != nil {
		t.Fatal(err)
	}
	return asynq.NewTask(TypeUpdateOrganization, b)
}

// TestLegacyPayloadKeepsItsIdentity: a version-1 task queued before the
// upgrade is applied under its old task id with the caller's key on every
// attempt, is still a duplicate for its own account (not for others), and
// is found by its key.
func TestLegacyPayloadKeepsItsIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 502})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	ctx := context.Background()
	task := legacyTask(t, e, "acct-A", "old-key")

	u := sampleUpdate("acct-A")
	u.IdempotencyKey = "old-key"
	got, err := p.Enqueue(ctx, u)
	if !errors.Is(err, ErrDuplicate) || got.TaskID != LegacyTaskID("old-key") {
		t.Errorf("re-enqueue by the same account: %+v, %v; want a duplicate of the legacy task", got, err)
	}
	u.IntegratedAccountID = "acct-B"
	if got, err := p.Enqueue(ctx, u); err != nil || got.TaskID != TaskID("acct-B", "old-key") {
		t.Errorf("another account with the key: %+v, %v; want its own update", got, err)
	}

	// Queued straight into asynq before admission: its first run joins admission.
	if err := e.handler.ProcessTask(ctx, task); !errors.Is(err, asynq.RevokeTask) || e.lastEvent().Outcome != OutcomeWaiting {
		t.Fatalf("legacy task's first run: %v (%+v), want it to join admission", err, e.lastEvent())
	}
	if err := e.run(task); !errors.Is(err, asynq.RevokeTask) || e.lastEvent().Outcome != OutcomeRetry {
		t.Fatalf("first run: %v, want a retry after the 502", err)
	}
	if err := e.run(task); err != nil {
		t.Fatalf("second run: %v", err)
	}
	if diff := cmp.Diff([]string{"old-key", "old-key"}, e.up.keys); diff != "" {
		t.Errorf("Idempotency-Keys of a version-1 update (-want +got):\n%s", diff)
	}
	rec, err := e.store.Ledger().Get(ctx, LegacyTaskID("old-key"))
	if err != nil || rec.State != StatusCompleted || rec.Attempts != 2 {
		t.Errorf("ledger under the legacy id: %+v, %v; want completed after 2 attempts", rec, err)
	}
	st, err := e.store.Operator().Find(ctx, Lookup{Ref: "old-key", Account: "acct-A"}, nil)
	if err != nil || st.TaskID != LegacyTaskID("old-key") {
		t.Errorf("find old-key of acct-A = %s, %v; want the legacy task", st.TaskID, err)
	}
}

// TestReplayKeepsLegacyIdentity: a version-1 dead letter is replayed as a
// version-1 payload, so its attempts before and after carry one key.
func TestReplayKeepsLegacyIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	ctx := context.Background()
	tests := []struct {
		name, taskID, wantKey string
		wantVersion           int
	}{
		{"version 1", LegacyTaskID("dead-1"), "dead-1", payloadV1},
		{"version 2", TaskID("acct-1", "dead-1"), UpstreamKey("acct-1", "dead-1"), PayloadVersion},
	}
	for _, tt := range tests {
		u := sampleUpdate("acct-1")
		u.IdempotencyKey = "dead-1"
		d := DeadLetter{TaskID: tt.taskID, Queue: DefaultQueue, Update: u, IdempotencyKey: "dead-1", Class: "permanent", DeadAt: e.now}
		if err := e.store.DeadLetters().Put(ctx, d); err != nil {
			t.Fatal(err)
		}
		if out, err := e.store.Operator().Replay(ctx, d, ReplayOptions{}); err != nil || out.Status != "replayed" {
			t.Fatalf("%s: replay = %+v, %v", tt.name, out, err)
		}
		st, ok, err := e.adm.Update(ctx, tt.taskID)
		if err != nil || !ok {
			t.Fatalf("%s: replayed update not under %s: %v", tt.name, tt.taskID, err)
		}
		pl, err := DecodePayload(st.Payload)
		if err != nil {
			t.Fatal(err)
		}
		type got struct {
			Version     int
			TaskID, Key string
		}
		if diff := cmp.Diff(got{tt.wantVersion, tt.taskID, tt.wantKey}, got{pl.Version, pl.TaskID(), pl.UpstreamKey()}); diff != "" {
			t.Errorf("%s: replayed payload (-want +got):\n%s", tt.name, diff)
		}
		if _, err := e.adm.Finish(ctx, "", tt.taskID, -1); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStatusTellsTaskIDsFromKeys: a key of task id form is found as a key,
// and a reference that is one update's id and another's key is reported as
// ambiguous until the caller says which it means.
func TestStatusTellsTaskIDsFromKeys(t *testing.T) {
	t.Parallel()
	p, store, _ := newProducer(t)
	ctx := context.Background()
	enqueue := func(account, key string) string {
		t.Helper()
		got, err := p.Enqueue(ctx, Update{ID: "o", IntegratedAccountID: account, Body: json.RawMessage(`{}`), IdempotencyKey: key})
		if err != nil {
			t.Fatal(err)
		}
		return got.TaskID
	}
	lookalike := "u_0123456789abcdef0123456789abcdef" // 34 characters starting with u_
	byKey := enqueue("acct-1", lookalike)
	other := enqueue("acct-2", "plain")
	tricky := enqueue("acct-3", other) // a key that is another update's task id

	tests := []struct {
		name      string
		lookup    Lookup
		wantID    string
		ambiguous bool
	}{
		{"key of task id form", Lookup{Ref: lookalike}, byKey, false},
		{"task id", Lookup{Ref: byKey}, byKey, false},
		{"task id and key at once", Lookup{Ref: other}, "", true},
		{"said to be a task id", Lookup{Ref: other, AsTaskID: true}, other, false},
		{"said to be a key", Lookup{Ref: other, AsKey: true}, tricky, false},
		{"key with its account", Lookup{Ref: other, Account: "acct-3"}, tricky, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st, err := store.Operator().Find(ctx, tt.lookup, nil)
			if tt.ambiguous {
				if !errors.Is(err, ErrAmbiguous) {
					t.Errorf("Find(%+v) = %s, %v; want ambiguous", tt.lookup, st.TaskID, err)
				}
				return
			}
			if err != nil || st.TaskID != tt.wantID {
				t.Errorf("Find(%+v) = %s, %v; want %s", tt.lookup, st.TaskID, err, tt.wantID)
			}
		})
	}
}
