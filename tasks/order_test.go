package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
)

// enqueueTask enqueues u through the producer and returns its payload as a task (for run).
func (e *env) enqueueTask(p *Producer, u Update) *asynq.Task {
	e.t.Helper()
	got, err := p.Enqueue(context.Background(), u)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.queued(got.TaskID)
}

// queued returns the payload admission holds for id as a task.
func (e *env) queued(id string) *asynq.Task {
	e.t.Helper()
	st, ok, err := e.adm.Update(context.Background(), id)
	if err != nil || !ok {
		e.t.Fatalf("update %s is not in admission: %v", id, err)
	}
	return asynq.NewTask(TypeUpdateOrganization, st.Payload)
}

func orgUpdate(key, body string) Update {
	return Update{ID: "org-7", IntegratedAccountID: "acct-1", Body: json.RawMessage(body), IdempotencyKey: key}
}

func TestOrderingOneAtATimeInEnqueueOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 500})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	base := e.now.UnixMilli() // sequence numbers count up from the clock's milliseconds
	first := e.enqueueTask(p, orgUpdate("k1", `{"name":"A"}`))
	second := e.enqueueTask(p, orgUpdate("k2", `{"name":"B"}`))
	other := e.enqueueTask(p, Update{ID: "org-8", IntegratedAccountID: "acct-1", Body: json.RawMessage(`{}`), IdempotencyKey: "k3"})

	// The second cannot overtake the first, even while the first is retrying:
	// it is not admitted, so it costs no run.
	if err := e.run(first); !errors.Is(err, asynq.RevokeTask) || e.lastEvent().Outcome != OutcomeRetry {
		t.Fatalf("first: %v (%+v), want a retry (scripted 500)", err, e.lastEvent())
	}
	runs := len(e.events)
	if err := e.run(second); !errors.Is(err, errNotAdmitted) || len(e.events) != runs {
		t.Fatalf("second while first retries: %v, want it not admitted", err)
	}
	// Another organization is not held back.
	if err := e.run(other); err != nil {
		t.Fatalf("other organization: %v", err)
	}
	if err := e.run(first); err != nil {
		t.Fatalf("first, second try: %v", err)
	}
	if err := e.run(second); err != nil {
		t.Fatalf("second after first: %v", err)
	}
	rec, _ := e.store.Ledger().Get(context.Background(), TaskID("acct-1", "k2"))
	if rec.Spent != 0 {
		t.Errorf("waiting in line spent %d budget", rec.Spent)
	}
	last, err := e.store.Lines().LastApplied(context.Background(), "acct-1", "org-7")
	if err != nil || last != base+1 {
		t.Errorf("LastApplied = %d, %v; want the second's place, %d", last, err, base+1)
	}
}

func TestOrderingDeadDoesNotBlockAndStaleReplayRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 422, body: `{"statusCode":422,"error":"Unprocessable Entity","message":"no"}`})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	first := e.enqueueTask(p, orgUpdate("k1", `{"name":"A"}`))
	second := e.enqueueTask(p, orgUpdate("k2", `{"name":"B"}`))
	if err := e.run(first); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("first: %v, want dead", err)
	}
	if err := e.run(second); err != nil {
		t.Fatalf("second after the first died: %v", err)
	}
	ctx := context.Background()
	d, err := e.store.DeadLetters().Get(ctx, TaskID("acct-1", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.store.Operator().Replay(ctx, d, ReplayOptions{})
	if err != nil || out.Status != "skipped" {
		t.Fatalf("replay of a stale dead letter = %+v, %v; want skipped", out, err)
	}
	out, err = e.store.Operator().Replay(ctx, d, ReplayOptions{Force: true})
	if err != nil || out.Status != "replayed" {
		t.Fatalf("forced replay = %+v, %v", out, err)
	}
}

// Replaying an organization's dead updates oldest first is not refused as
// stale because the first replay applied (it is older data, not newer).
func TestOrderingReplayAllOfAnOrganization(t *testing.T) {
	t.Parallel()
	dead := answer{status: 422, body: `{"statusCode":422,"error":"Unprocessable Entity","message":"no"}`}
	e := newEnv(t, Policy{}, dead, dead)
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	ctx := context.Background()
	var ds []DeadLetter
	for _, k := range []string{"k1", "k2"} {
		_ = e.run(e.enqueueTask(p, orgUpdate(k, `{"name":"`+k+`"}`)))
		d, err := e.store.DeadLetters().Get(ctx, TaskID("acct-1", k))
		if err != nil {
			t.Fatal(err)
		}
		d.Queue = DefaultQueue
		ds = append(ds, d)
		e.now = e.now.Add(time.Second)
	}
	// Replay both, oldest first, before either runs (as `dlq replay --all` does).
	for _, d := range ds {
		out, err := e.store.Operator().Replay(ctx, d, ReplayOptions{})
		if err != nil || out.Status != "replayed" {
			t.Fatalf("replay %s = %+v, %v; the replay of an older update must not make a newer one stale", d.IdempotencyKey, out, err)
		}
	}
	for _, k := range []string{"k1", "k2"} {
		if err := e.run(e.queued(TaskID("acct-1", k))); err != nil {
			t.Fatalf("replayed %s: %v", k, err)
		}
	}
}

// A replay interrupted after re-enqueueing (its dead letter left behind) is
// not re-run by a second replay once the update has completed.
func TestReplayTwiceDoesNotResendCompleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 422, body: `{"statusCode":422,"error":"Unprocessable Entity","message":"no"}`})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	_ = e.run(e.enqueueTask(p, orgUpdate("k1", `{"name":"A"}`)))
	ctx := context.Background()
	d, _ := e.store.DeadLetters().Get(ctx, TaskID("acct-1", "k1"))
	d.Queue = DefaultQueue
	if out, err := e.store.Operator().Replay(ctx, d, ReplayOptions{}); err != nil || out.Status != "replayed" {
		t.Fatalf("first replay = %+v, %v", out, err)
	}
	// The first replay "failed" to remove the dead letter; the update then completed.
	_ = e.store.DeadLetters().Put(ctx, d)
	if err := e.run(e.queued(TaskID("acct-1", "k1"))); err != nil {
		t.Fatalf("replayed run: %v", err)
	}
	before := e.up.count()
	out, err := e.store.Operator().Replay(ctx, d, ReplayOptions{})
	if err != nil || out.Status != "skipped" {
		t.Fatalf("second replay = %+v, %v; want skipped", out, err)
	}
	if _, err := e.store.DeadLetters().Get(ctx, TaskID("acct-1", "k1")); !errors.Is(err, ErrNotFound) {
		t.Errorf("the leftover dead letter was not removed: %v", err)
	}
	if rec, _ := e.store.Ledger().Get(ctx, TaskID("acct-1", "k1")); rec.State != StatusCompleted || rec.Result == nil {
		t.Errorf("the second replay reset the completed update's ledger: %+v", rec)
	}
	if e.up.count() != before {
		t.Errorf("upstream saw %d more requests", e.up.count()-before)
	}
}

// Replaying an update while a later one of the same organization is still
// queued is refused: the old body would apply last.
func TestReplayRefusedBehindQueuedLaterUpdate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 422, body: `{"statusCode":422,"error":"Unprocessable Entity","message":"no"}`})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	_ = e.run(e.enqueueTask(p, orgUpdate("k1", `{"name":"A"}`)))
	e.enqueueTask(p, orgUpdate("k2", `{"name":"B"}`)) // queued, not yet run
	d, _ := e.store.DeadLetters().Get(context.Background(), TaskID("acct-1", "k1"))
	out, err := e.store.Operator().Replay(context.Background(), d, ReplayOptions{})
	if err != nil || out.Status != "skipped" || !strings.Contains(out.Reason, "queued") {
		t.Errorf("replay = %+v, %v; want skipped because k2 is queued", out, err)
	}
}
