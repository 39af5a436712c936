package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/redistest"
)

// realStore is a Store on a private redis-server: run.lua is tested where it
// runs in production.
func realStore(t *testing.T) (*Store, *redis.Client) {
	t.Helper()
	rdb := redistest.Start(t).Client()
	return NewStore(rdb), rdb
}

func mustRun(t *testing.T, s *Store, name string) RunStatus {
	t.Helper()
	st, err := s.Runs().Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestRunScriptCountsEachUpdateOnce(t *testing.T) {
	t.Parallel()
	s, rdb := realStore(t)
	ctx := context.Background()
	entries := []runEntry{{1, "u_a", "ka"}, {2, "u_b", "kb"}, {4, "u_c", "kc"}}
	places, err := s.runs.addToRun(ctx, "r1", entries)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range places {
		if p.prior != "new" || p.line != entries[i].line {
			t.Errorf("entry %d landed at %+v, want new at line %d", i, p, entries[i].line)
		}
	}
	// The same file again: nothing added, every line where it was.
	again, err := s.runs.addToRun(ctx, "r1", entries)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range again {
		if p.prior != runWaiting || p.line != entries[i].line {
			t.Errorf("entry %d re-added as %+v, want waiting at line %d", i, p, entries[i].line)
		}
	}
	// The same update under another line number (an exported, edited line
	// in a new file) keeps its first line; an unnumbered one takes the next.
	moved, _ := s.runs.addToRun(ctx, "r1", []runEntry{{9, "u_a", "ka"}, {0, "u_d", "kd"}})
	if moved[0].line != 1 || moved[1].line != 5 {
		t.Errorf("re-added u_a at line %d (want 1), unnumbered u_d at %d (want 5)", moved[0].line, moved[1].line)
	}
	if st := mustRun(t, s, "r1"); st.Total != 4 || st.Waiting != 4 || st.Sealed || st.Done {
		t.Fatalf("status %+v; want 4 waiting, open", st)
	}
	// Ending states: counted once each, whatever the repeats.
	for range 2 {
		if _, err := s.runs.setRunState(ctx, "r1", "u_a", runCompleted); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = s.runs.setRunState(ctx, "r1", "u_b", runDead)
	if done, _ := s.runs.setRunState(ctx, "r1", "u_zz", runCompleted); done {
		t.Error("an update not in the run made it done")
	}
	st := mustRun(t, s, "r1")
	if st.Completed != 1 || st.Dead != 1 || st.Waiting != 2 {
		t.Fatalf("status %+v; want 1 completed, 1 dead, 2 waiting", st)
	}
	// Line 2 edited in place and enqueued again: the new update replaces the
	// dead one in the run, which counts it once.
	if _, err := s.runs.addToRun(ctx, "r1", []runEntry{{2, "u_b2", "kb2"}}); err != nil {
		t.Fatal(err)
	}
	if st := mustRun(t, s, "r1"); st.Total != 4 || st.Dead != 0 || st.Waiting != 3 {
		t.Fatalf("after editing line 2: %+v; want 4 in all, 0 dead, 3 waiting", st)
	}
	if err := s.Runs().Seal(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"u_b2", "u_c"} {
		if done, err := s.runs.setRunState(ctx, "r1", id, runCompleted); err != nil || done {
			t.Fatalf("%s: done %v, %v; want not done yet", id, done, err)
		}
	}
	done, err := s.runs.setRunState(ctx, "r1", "u_d", runDead)
	if err != nil || !done {
		t.Fatalf("the last update ended: done %v, %v; want done", done, err)
	}
	if err := s.runs.announceRun(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if done, _ := s.runs.setRunState(ctx, "r1", "u_d", runDead); done {
		t.Error("the run became done twice")
	}
	st = mustRun(t, s, "r1")
	if !st.Done || st.Finished.IsZero() || st.Completed != 3 || st.Dead != 1 {
		t.Fatalf("status %+v; want done: 3 completed, 1 dead", st)
	}
	// A replay makes it waiting again: the run is open until it ends again.
	_, _ = s.runs.setRunState(ctx, "r1", "u_d", runWaiting)
	if st := mustRun(t, s, "r1"); st.Done || !st.Finished.IsZero() || st.Waiting != 1 {
		t.Fatalf("after a replay: %+v; want 1 waiting, not done", st)
	}
	if done, _ := s.runs.setRunState(ctx, "r1", "u_d", runPurged); !done {
		t.Error("purging the last waiting update did not make the run done")
	}
	// Every key of the run expires with the results.
	for _, k := range s.runs.runKeys("r1") {
		if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 0 || ttl > DefaultResultTTL {
			t.Errorf("%s: TTL %v, want at most %v", k, ttl, DefaultResultTTL)
		}
	}
	if _, err := s.Runs().Get(ctx, "no-such-run"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown run: %v, want ErrNotFound", err)
	}
	if err := s.Runs().Seal(ctx, "no-such-run"); !errors.Is(err, ErrNotFound) {
		t.Errorf("sealing an unknown run: %v, want ErrNotFound", err)
	}
}

func TestRunNamesAreChecked(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", strings.Repeat("r", MaxRunNameBytes+1), "a\nb", "bad\xff"} {
		if ValidateRunName(bad) == nil {
			t.Errorf("run name %q accepted", bad)
		}
	}
	for _, good := range []string{"crm-2026-11-28", "{weird}:name with spaces", "日本"} {
		if err := ValidateRunName(good); err != nil {
			t.Errorf("run name %q refused: %v", good, err)
		}
	}
	p, _, mr := newProducer(t)
	_, err := p.Enqueue(context.Background(), sampleUpdate("a"), InRun("a\x00b"))
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Field != "run" {
		t.Errorf("a control character in the run name: %v, want a ValidationError on run", err)
	}
	if keys := mr.Keys(); len(keys) != 0 {
		t.Errorf("a refused enqueue left keys: %v", keys)
	}
}

// TestRunFollowsItsUpdatesThroughTheWorker: a run of four lines through the
// handler: completions, a 422 dead letter, the run done with one event, the
// results line by line, then a replay that moves the dead line back to
// waiting and on to completed.
func TestRunFollowsItsUpdatesThroughTheWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 200, body: `{"id":"o1","name":"one"}`},
		answer{status: 422, body: `{"error":"name is required"}`})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	ctx := context.Background()
	var tasks []string
	for i := 1; i <= 4; i++ {
		u := Update{ID: fmt.Sprintf("o%d", i), IntegratedAccountID: "acct", Body: json.RawMessage(`{"name":"x"}`),
			IdempotencyKey: fmt.Sprintf("k%d", i)}
		got, err := p.Enqueue(ctx, u, InRun("nightly"), AtLine(int64(i*2)))
		if err != nil {
			t.Fatal(err)
		}
		tasks = append(tasks, got.TaskID)
	}
	if err := e.store.Runs().Seal(ctx, "nightly"); err != nil {
		t.Fatal(err)
	}
	for i, id := range tasks[:3] {
		if err := e.run(e.queued(id)); err != nil && i != 1 {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	st := mustRun(t, e.store, "nightly")
	if st.Completed != 2 || st.Dead != 1 || st.Waiting != 1 || st.Done {
		t.Fatalf("status %+v; want 2 completed, 1 dead, 1 waiting", st)
	}
	// The same lines again (a re-run of the file): nothing new.
	for i := 1; i <= 4; i++ {
		u := Update{ID: fmt.Sprintf("o%d", i), IntegratedAccountID: "acct", Body: json.RawMessage(`{"name":"x"}`),
			IdempotencyKey: fmt.Sprintf("k%d", i)}
		if _, err := p.Enqueue(ctx, u, InRun("nightly"), AtLine(int64(i*2))); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("line %d again: %v, want a duplicate", i*2, err)
		}
	}
	if got := mustRun(t, e.store, "nightly"); got.Total != 4 || got.Completed != 2 || got.Dead != 1 {
		t.Fatalf("after the re-run: %+v; want the same counts", got)
	}
	if err := e.run(e.queued(tasks[3])); err != nil {
		t.Fatal(err)
	}
	st = mustRun(t, e.store, "nightly")
	if !st.Done || st.Completed != 3 || st.Dead != 1 {
		t.Fatalf("status %+v; want done with 3 completed, 1 dead", st)
	}
	if err := e.store.Runs().DeadLetters(ctx, &st); err != nil {
		t.Fatal(err)
	}
	if st.DeadByStatus["422"] != 1 || st.DeadByClass["permanent"] != 1 {
		t.Errorf("dead letters by status %v, by class %v; want one 422, permanent", st.DeadByStatus, st.DeadByClass)
	}

	var results []RunResult
	if err := e.store.Runs().EachResult(ctx, "nightly", ResultFilter{}, func(r RunResult) error {
		results = append(results, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(results) != 4 {
		t.Fatalf("%d results, want 4: %+v", len(results), results)
	}
	for i, r := range results {
		if r.Line != int64(2*(i+1)) || r.TaskID != tasks[i] || r.IdempotencyKey != fmt.Sprintf("k%d", i+1) {
			t.Errorf("result %d: %+v; want line %d, task %s", i, r, 2*(i+1), tasks[i])
		}
	}
	if r := results[0]; r.State != StatusCompleted || r.StatusCode != 200 || string(r.Response) != `{"id":"o1","name":"one"}` {
		t.Errorf("line 2: %+v; want completed with the stored response", r)
	}
	if r := results[1]; r.State != StatusDead || r.StatusCode != 422 || r.Error == nil ||
		r.Error.Class != "permanent" || string(r.Error.Body) != `{"error":"name is required"}` {
		t.Errorf("line 4: %+v (error %+v); want dead, 422, Truto's body", r, r.Error)
	}
	var dead []RunResult
	_ = e.store.Runs().EachResult(ctx, "nightly", ResultFilter{State: StatusDead}, func(r RunResult) error {
		dead = append(dead, r)
		return nil
	})
	if len(dead) != 1 || dead[0].Line != 4 {
		t.Errorf("--state dead: %+v; want line 4 only", dead)
	}

	// The events: three completions, one dead letter, then the run done.
	evs, err := e.store.Events().Read(ctx, "", 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
		if ev.Type != EventRunDone && (!ev.InRun("nightly") || ev.Account != "acct" || ev.TaskID == "") {
			t.Errorf("event %+v: want the update's ids and its run", ev)
		}
	}
	if want := "completed dead completed completed run_done"; strings.Join(types, " ") != want {
		t.Errorf("events %v, want %s", types, want)
	}
	if last := evs[len(evs)-1]; last.Run != "nightly" || last.Total != 4 || last.Dead != 1 || last.Completed != 3 {
		t.Errorf("run_done event %+v; want nightly: 4 in all, 3 completed, 1 dead", last)
	}

	// Replayed: dead, then waiting, then completed in its run.
	d, err := e.store.DeadLetters().Get(ctx, tasks[1])
	if err != nil {
		t.Fatal(err)
	}
	if out, err := e.store.Operator().Replay(ctx, d, ReplayOptions{}); err != nil || out.Status != "replayed" {
		t.Fatalf("replay: %+v, %v", out, err)
	}
	if st := mustRun(t, e.store, "nightly"); st.Dead != 0 || st.Waiting != 1 || st.Done {
		t.Fatalf("after the replay: %+v; want it waiting, the run open", st)
	}
	if err := e.run(e.queued(tasks[1])); err != nil {
		t.Fatal(err)
	}
	if st := mustRun(t, e.store, "nightly"); !st.Done || st.Completed != 4 {
		t.Fatalf("after the replayed update applied: %+v; want done, 4 completed", st)
	}
	evs, _ = e.store.Events().Read(ctx, evs[len(evs)-1].ID, 100, 0)
	if len(evs) != 2 || evs[0].Type != EventCompleted || evs[1].Type != EventRunDone || evs[1].Completed != 4 {
		t.Errorf("events after the replay: %+v; want a completion, then run_done with 4 completed", evs)
	}
}

// TestPurgedUpdatesEndTheirRun: a dead update purged counts as purged, not
// waiting; enqueued again (export, fix, bulk) it waits once more.
func TestPurgedUpdatesEndTheirRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 422, body: `{"error":"bad"}`})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	ctx := context.Background()
	u := Update{ID: "o1", IntegratedAccountID: "acct", Body: json.RawMessage(`{"name":"x"}`), IdempotencyKey: "k1"}
	got, err := p.Enqueue(ctx, u, InRun("r"))
	if err != nil {
		t.Fatal(err)
	}
	_ = e.store.Runs().Seal(ctx, "r")
	_ = e.run(e.queued(got.TaskID))
	d, err := e.store.DeadLetters().Get(ctx, got.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Operator().Purge(ctx, d); err != nil {
		t.Fatal(err)
	}
	st := mustRun(t, e.store, "r")
	if st.Purged != 1 || st.Dead != 0 || !st.Done {
		t.Fatalf("after the purge: %+v; want 1 purged, done", st)
	}
	var states []State
	_ = e.store.Runs().EachResult(ctx, "r", ResultFilter{}, func(r RunResult) error { states = append(states, r.State); return nil })
	if len(states) != 1 || states[0] != StatusPurged {
		t.Errorf("results: %v, want [purged]", states)
	}
	// Fixed and enqueued again under the same run and key: waiting, then completed.
	u.Body = json.RawMessage(`{"name":"fixed"}`)
	if _, err := p.Enqueue(ctx, u, InRun("r")); err != nil {
		t.Fatal(err)
	}
	_ = e.store.Runs().Seal(ctx, "r")
	if st := mustRun(t, e.store, "r"); st.Total != 1 || st.Waiting != 1 || st.Done {
		t.Fatalf("enqueued again: %+v; want 1 waiting", st)
	}
	if err := e.run(e.queued(got.TaskID)); err != nil {
		t.Fatal(err)
	}
	if st := mustRun(t, e.store, "r"); !st.Done || st.Completed != 1 || st.Total != 1 {
		t.Fatalf("applied: %+v; want done, 1 completed of 1", st)
	}
}

// TestUpdateInTwoRuns: a line of a second run naming an update of the first
// (same account and key) is counted in both, whichever ends it.
func TestUpdateInTwoRuns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	p := NewProducer(e.store, WithProducerClock(func() time.Time { return e.now }))
	ctx := context.Background()
	u := Update{ID: "o1", IntegratedAccountID: "acct", Body: json.RawMessage(`{}`), IdempotencyKey: "shared"}
	got, err := p.Enqueue(ctx, u, InRun("first"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Enqueue(ctx, u, InRun("second")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second run: %v, want a duplicate", err)
	}
	for _, r := range []string{"first", "second"} {
		_ = e.store.Runs().Seal(ctx, r)
	}
	if err := e.run(e.queued(got.TaskID)); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"first", "second"} {
		if st := mustRun(t, e.store, r); !st.Done || st.Completed != 1 {
			t.Errorf("run %s: %+v; want done with 1 completed", r, st)
		}
	}
	// A third run naming it after it applied counts it at once.
	if _, err := p.Enqueue(ctx, u, InRun("third")); !errors.Is(err, ErrDuplicate) {
		t.Fatal(err)
	}
	_ = e.store.Runs().Seal(ctx, "third")
	if st := mustRun(t, e.store, "third"); !st.Done || st.Completed != 1 {
		t.Errorf("run third: %+v; want done with 1 completed", st)
	}
	runs, err := e.store.Runs().List(ctx)
	if err != nil || len(runs) != 3 {
		t.Fatalf("runs list: %+v, %v; want 3", runs, err)
	}
}

// TestEventReaderAtLeastOnce: a consumer that read events and stopped before
// acknowledging them gets them again when it comes back; a dead consumer's
// are claimed by another; acknowledged ones never come back.
func TestEventReaderAtLeastOnce(t *testing.T) {
	t.Parallel()
	s, _ := realStore(t)
	ctx := context.Background()
	newReader := func(consumer string) *EventReader {
		r, err := s.Events().NewReader(EventReaderOptions{Group: "billing", Consumer: consumer, StartAt: "0",
			Block: 50 * time.Millisecond, ClaimIdle: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for i := range 3 {
		if err := s.events.emit(ctx, OutcomeEvent{Type: EventCompleted, At: time.Now(), TaskID: fmt.Sprintf("u_%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	a := newReader("a")
	got, err := a.Read(ctx)
	if err != nil || len(got) != 3 {
		t.Fatalf("first read: %d events, %v; want 3", len(got), err)
	}
	_ = a.Ack(ctx, got[0].ID)
	// "a" restarts: the two it did not acknowledge come back to it first.
	a = newReader("a")
	again, err := a.Read(ctx)
	if err != nil || len(again) != 2 || again[0].TaskID != "u_1" {
		t.Fatalf("after a restart: %+v, %v; want u_1 and u_2 again", again, err)
	}
	if next, _ := a.Read(ctx); len(next) != 0 {
		t.Errorf("then: %+v; want nothing new", next)
	}
	// "a" dies for good; once its events are idle long enough, "b" takes them.
	b := newReader("b")
	deadline := time.Now().Add(10 * time.Second)
	var claimed []OutcomeEvent
	for len(claimed) < 2 && time.Now().Before(deadline) {
		evs, err := b.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		claimed = append(claimed, evs...)
	}
	if len(claimed) != 2 {
		t.Fatalf("b claimed %+v; want a's two unacknowledged events", claimed)
	}
	_ = b.Ack(ctx, claimed[0].ID, claimed[1].ID)
	if err := s.events.emit(ctx, OutcomeEvent{Type: EventDead, At: time.Now(), TaskID: "u_3", StatusCode: 422}); err != nil {
		t.Fatal(err)
	}
	var fresh []OutcomeEvent
	for len(fresh) == 0 && time.Now().Before(deadline) {
		fresh, _ = b.Read(ctx)
	}
	if len(fresh) != 1 || fresh[0].TaskID != "u_3" || fresh[0].StatusCode != 422 {
		t.Errorf("new event: %+v; want u_3 dead with 422, once", fresh)
	}
}

// TestRunResultsSparseAndNotQueued: line numbers far apart are read as they
// are, not as every number up to the highest; a line whose update never
// reached admission (its enqueue stopped half-way) shows as not_queued.
func TestRunResultsSparseAndNotQueued(t *testing.T) {
	t.Parallel()
	s, rdb := realStore(t)
	rt := &roundTrips{}
	rdb.AddHook(rt)
	ctx := context.Background()
	if _, err := s.runs.addToRun(ctx, "sparse", []runEntry{{1_000_000_000, "u_b", "kb"}, {3, "u_a", "ka"}}); err != nil {
		t.Fatal(err)
	}
	before := rt.n.Load()
	var got []RunResult
	if err := s.Runs().EachResult(ctx, "sparse", ResultFilter{}, func(r RunResult) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if trips := rt.n.Load() - before; trips > 10 {
		t.Errorf("%d round trips for 2 lines numbered up to 1e9; want a handful", trips)
	}
	if len(got) != 2 || got[0].Line != 3 || got[1].Line != 1_000_000_000 {
		t.Fatalf("results %+v; want lines 3 and 1e9 in order", got)
	}
	for _, r := range got {
		if r.State != StatusNotQueued {
			t.Errorf("line %d: state %q, want %q", r.Line, r.State, StatusNotQueued)
		}
	}
}

// TestRunDoneAnnouncedOnce: the worker that ends a run's last update and a
// reader of the run's status, finding it done at the same moment, write one
// run_done event between them.
func TestRunDoneAnnouncedOnce(t *testing.T) {
	t.Parallel()
	s, _ := realStore(t)
	ctx := context.Background()
	if _, err := s.runs.addToRun(ctx, "once", []runEntry{{1, "u_a", "ka"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Runs().Seal(ctx, "once"); err != nil {
		t.Fatal(err)
	}
	done, err := s.runs.setRunState(ctx, "once", "u_a", runCompleted)
	if err != nil || !done {
		t.Fatalf("done %v, %v; want the run done", done, err)
	}
	// The worker and several readers all find it done and not yet announced.
	errs := make(chan error, 5)
	for range 5 {
		go func() { errs <- s.runs.announceRun(ctx, "once") }()
	}
	for range 5 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Runs().Get(ctx, "once"); err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events().Read(ctx, "", 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != EventRunDone {
		t.Errorf("events %+v; want one run_done", evs)
	}
}
