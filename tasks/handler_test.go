package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/trutoclient"
)

// answer is one scripted upstream response; status 0 means "drop the connection".
type answer struct {
	status int
	header map[string]string
	body   string
}

// upstream is an httptest server that answers from a script, then 200s.
type upstream struct {
	mu       sync.Mutex
	script   []answer
	requests []*http.Request
	keys     []string
	srv      *httptest.Server
}

func newUpstream(t *testing.T, script ...answer) *upstream {
	t.Helper()
	u := &upstream{script: script}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.requests = append(u.requests, r)
		u.keys = append(u.keys, r.Header.Get("Idempotency-Key"))
		a := answer{status: 200, body: `{"id":"org-1","name":"Acme"}`}
		if len(u.script) > 0 {
			a, u.script = u.script[0], u.script[1:]
		}
		u.mu.Unlock()
		if a.status == 0 {
			conn, _, _ := w.(http.Hijacker).Hijack()
			_ = conn.Close()
			return
		}
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(a.status)
		_, _ = w.Write([]byte(a.body))
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.requests)
}

type env struct {
	t       *testing.T
	mr      *miniredis.Miniredis
	store   *Store
	adm     *admission.Scheduler
	handler *Handler
	up      *upstream
	now     time.Time
	events  []Event
	tickets map[string]admission.Ticket // admitted, not yet run
}

func newEnv(t *testing.T, policy Policy, script ...answer) *env {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	e := &env{t: t, mr: mr, up: newUpstream(t, script...), now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	clock := func() time.Time { return e.now }
	e.tickets = map[string]admission.Ticket{}
	e.adm = admission.New(rdb, admission.Config{}, admission.WithClock(clock))
	e.store = NewStore(rdb, WithClock(clock), WithScheduler(e.adm))
	client, err := trutoclient.New("secret-token", trutoclient.WithBaseURL(e.up.srv.URL), trutoclient.WithTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if policy.InCallBase == 0 {
		policy.InCallBase = time.Millisecond
	}
	e.handler = NewHandler(client, e.store, policy, WithHandlerClock(clock), WithObserver(func(ev Event) { e.events = append(e.events, ev) }))
	return e
}

// task puts u into admission, as the producer does, and returns its payload
// as a task (for taskIDOf and taskKey, and to run it with run).
func (e *env) task(u Update) *asynq.Task {
	e.t.Helper()
	if u.IdempotencyKey == "" {
		u.IdempotencyKey = NewKey()
	}
	return e.add(Payload{Version: PayloadVersion, Update: u, EnqueuedAt: e.now})
}

func (e *env) add(pl Payload) *asynq.Task {
	e.t.Helper()
	b, err := EncodePayload(pl)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.adm.Add(context.Background(), admission.Item{ID: pl.TaskID(), Account: pl.IntegratedAccountID,
		Org: orgKey(pl.Update), Queue: DefaultQueue, Payload: b, Origin: pl.OriginSeq}); err != nil {
		e.t.Fatal(err)
	}
	return asynq.NewTask(TypeUpdateOrganization, b)
}

// errNotAdmitted: the update waits in admission (its account is held or
// parked, or an earlier update of its organization goes first).
var errNotAdmitted = errors.New("not admitted: the update waits in admission")

// admit admits the task's update as a worker's admitter would and returns the
// task a worker would run. An update waiting only on its own not-before time
// (a backoff, a 429's reset) has the clock moved to that time first.
func (e *env) admit(task *asynq.Task) (*asynq.Task, error) {
	e.t.Helper()
	ctx := context.Background()
	id := taskIDOf(e.t, task)
	if tk, ok := e.tickets[id]; ok {
		delete(e.tickets, id)
		return TicketTask(tk), nil
	}
	if st, in, err := e.adm.Update(ctx, id); err != nil {
		e.t.Fatal(err)
	} else if in && st.State == "waiting" && st.Ahead == 0 && st.NotBefore.After(e.now) {
		e.now = st.NotBefore
	}
	tickets, _, err := e.adm.Admit(ctx, "test-admitter")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, tk := range tickets {
		e.tickets[tk.ID] = tk
	}
	tk, ok := e.tickets[id]
	if !ok {
		return nil, errNotAdmitted
	}
	delete(e.tickets, id)
	return TicketTask(tk), nil
}

// run admits the task's update and runs it.
func (e *env) run(task *asynq.Task) error {
	e.t.Helper()
	tt, err := e.admit(task)
	if err != nil {
		return err
	}
	return e.handler.ProcessTask(context.Background(), tt)
}

// waiting is the update's admission state; it fails the test when admission
// does not hold it.
func (e *env) waiting(id string) admission.UpdateState {
	e.t.Helper()
	st, ok, err := e.adm.Update(context.Background(), id)
	if err != nil || !ok || st.State != "waiting" {
		e.t.Fatalf("update %s: admission state %+v (held %v, %v); want waiting", id, st, ok, err)
	}
	return st
}

func (e *env) lastEvent() Event {
	if len(e.events) == 0 {
		e.t.Fatal("no event observed")
	}
	return e.events[len(e.events)-1]
}

func sampleUpdate(account string) Update {
	return Update{ID: "org-1", IntegratedAccountID: account, Body: json.RawMessage(`{"remote_data":{"tier":"gold"}}`)}
}

// taskIDOf is the task id of the update task carries.
func taskIDOf(t *testing.T, task *asynq.Task) string {
	t.Helper()
	p, err := DecodePayload(task.Payload())
	if err != nil {
		t.Fatal(err)
	}
	return p.TaskID()
}

func taskKey(t *testing.T, task *asynq.Task) string {
	t.Helper()
	p, err := DecodePayload(task.Payload())
	if err != nil {
		t.Fatal(err)
	}
	return p.IdempotencyKey
}

func TestHandlerSuccessStoresResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 200, header: map[string]string{"Content-Type": "application/json"}, body: `{"id":"org-1","name":"Acme"}`})
	task := e.task(sampleUpdate("acct-1"))
	if err := e.run(task); err != nil {
		t.Fatalf("ProcessTask: %v", err)
	}
	id := taskIDOf(t, task)
	rec, err := e.store.Ledger().Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != StatusCompleted || rec.Result == nil || rec.Result.StatusCode != 200 || string(rec.Result.Body) != `{"id":"org-1","name":"Acme"}` {
		t.Fatalf("record = %+v, result %+v; want completed with the body", rec, rec.Result)
	}
	if rec.Result.Attempts != 1 || rec.Spent != 0 {
		t.Errorf("attempts %d spent %d; want 1 and 0", rec.Result.Attempts, rec.Spent)
	}
	if got, want := e.up.keys[0], UpstreamKey("acct-1", taskKey(t, task)); got != want {
		t.Errorf("Idempotency-Key = %q, want %q, derived from the update's account and key", got, want)
	}
	// The same update in admission again (a crash before admission heard it
	// finished, or an enqueue racing the completion): nothing is sent twice.
	e.add(mustDecode(t, task))
	if err := e.run(task); err != nil {
		t.Fatalf("second ProcessTask: %v", err)
	}
	if got := e.up.count(); got != 1 {
		t.Errorf("upstream saw %d requests, want 1", got)
	}
	if ev := e.lastEvent(); ev.Outcome != OutcomeCompleted || ev.Class != ClassSkipped {
		t.Errorf("second run event = %+v, want completed/skipped", ev)
	}
}

func TestHandlerFailurePolicy(t *testing.T) {
	t.Parallel()
	trutoJSON := func(code int, msg string) string {
		b, _ := json.Marshal(map[string]any{"statusCode": code, "error": http.StatusText(code), "message": msg})
		return string(b)
	}
	tests := []struct {
		name        string
		answer      answer
		wantOutcome Outcome
		wantWait    time.Duration // for 429s: the account's hold
		wantHold    string
		wantSpent   int
		wantDead    bool
	}{
		{"400 dead", answer{status: 400, body: trutoJSON(400, "bad")}, OutcomeDead, 0, "", 0, true},
		{"403 dead", answer{status: 403, body: trutoJSON(403, "scopes")}, OutcomeDead, 0, "", 0, true},
		{"404 dead", answer{status: 404, body: trutoJSON(404, "no such org")}, OutcomeDead, 0, "", 0, true},
		{"405 dead", answer{status: 405, body: trutoJSON(405, "sandbox")}, OutcomeDead, 0, "", 0, true},
		{"409 dead", answer{status: 409, body: trutoJSON(409, "conflict")}, OutcomeDead, 0, "", 0, true},
		{"413 dead", answer{status: 413, body: trutoJSON(413, "too big")}, OutcomeDead, 0, "", 0, true},
		{"422 dead", answer{status: 422, body: trutoJSON(422, "invalid tier")}, OutcomeDead, 0, "", 0, true},
		{"429 waits Retry-After", answer{status: 429, header: map[string]string{"Retry-After": "7"}, body: trutoJSON(429, "slow down")}, OutcomeWaiting, 7 * time.Second, HoldRateLimited, 0, false},
		{"429 default 10s", answer{status: 429, body: trutoJSON(429, "slow down")}, OutcomeWaiting, 10 * time.Second, HoldRateLimited, 0, false},
		{"401 parks", answer{status: 401, body: `{"statusCode":401,"error":"Unauthorized","message":"reauth","truto_is_remote_error":true}`}, OutcomeWaiting, 0, HoldParked, 0, false},
		{"503 Truto body parks", answer{status: 503, body: trutoJSON(503, "account blocked")}, OutcomeWaiting, 0, HoldParked, 0, false},
		{"503 proxy retries", answer{status: 503, body: "<html>down</html>"}, OutcomeRetry, 0, "", 1, false},
		{"408 retries", answer{status: 408}, OutcomeRetry, 0, "", 1, false},
		{"425 retries", answer{status: 425}, OutcomeRetry, 0, "", 1, false},
		{"500 retries", answer{status: 500, body: trutoJSON(500, "oops")}, OutcomeRetry, 0, "", 1, false},
		{"502 retries", answer{status: 502}, OutcomeRetry, 0, "", 1, false},
		{"504 retries", answer{status: 504}, OutcomeRetry, 0, "", 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, Policy{}, tc.answer)
			task := e.task(sampleUpdate("acct-1"))
			err := e.run(task)
			id := taskIDOf(t, task)
			ctx := context.Background()

			if got := e.lastEvent().Outcome; got != tc.wantOutcome {
				t.Fatalf("outcome = %s (err %v), want %s", got, err, tc.wantOutcome)
			}
			switch tc.wantOutcome {
			case OutcomeDead:
				if !errors.Is(err, asynq.SkipRetry) {
					t.Errorf("err = %v, want SkipRetry", err)
				}
				if _, in, _ := e.adm.Update(ctx, id); in {
					t.Error("a dead update is still in admission, holding its organization back")
				}
			case OutcomeWaiting, OutcomeRetry:
				// Back to admission: asynq keeps no copy, and the update waits in its lane.
				if !errors.Is(err, asynq.RevokeTask) {
					t.Errorf("err = %v, want RevokeTask", err)
				}
				st := e.waiting(id)
				if tc.wantOutcome == OutcomeRetry && !st.NotBefore.After(e.now) {
					t.Errorf("a failed update goes again at %v, not after a backoff", st.NotBefore)
				}
			}
			_, dlqErr := e.store.DeadLetters().Get(ctx, id)
			if gotDead := dlqErr == nil; gotDead != tc.wantDead {
				t.Errorf("dead letter exists = %v, want %v", gotDead, tc.wantDead)
			}
			hold, held, err := e.store.Accounts().Hold(ctx, "acct-1")
			if err != nil {
				t.Fatal(err)
			}
			if gotHold := map[bool]string{true: hold.Kind}[held]; gotHold != tc.wantHold {
				t.Errorf("hold = %q, want %q", gotHold, tc.wantHold)
			}
			if tc.wantWait > 0 && !hold.Until.Equal(e.now.Add(tc.wantWait)) {
				t.Errorf("held until %v, want %s from now", hold.Until, tc.wantWait)
			}
			rec, _ := e.store.Ledger().Get(ctx, id)
			if rec.Spent != tc.wantSpent {
				t.Errorf("spent = %d, want %d", rec.Spent, tc.wantSpent)
			}
		})
	}
}

func TestHandlerDeadLetterRecord(t *testing.T) {
	t.Parallel()
	body := `{"statusCode":422,"error":"Unprocessable Entity","message":"tier is invalid","truto_is_remote_error":true,"raw_response":{"errors":["tier"]}}`
	e := newEnv(t, Policy{}, answer{status: 422, body: body})
	u := sampleUpdate("acct-9")
	u.IdempotencyKey = "my-key-1"
	task := e.task(u)
	_ = e.run(task)
	d, err := e.store.DeadLetters().Get(context.Background(), TaskID("acct-9", "my-key-1"))
	if err != nil {
		t.Fatal(err)
	}
	if d.StatusCode != 422 || d.Class != "permanent" || d.ErrorBody != body || d.IdempotencyKey != "my-key-1" ||
		d.Update.ID != "org-1" || d.Attempts != 1 || d.FirstAttemptAt.IsZero() || d.LastAttemptAt.IsZero() || d.DeadAt.IsZero() {
		t.Errorf("dead letter = %+v", d)
	}
	// The ledger says dead: the update in admission again sends nothing.
	e.add(mustDecode(t, task))
	if err := e.run(task); !errors.Is(err, asynq.SkipRetry) {
		t.Errorf("re-run err = %v, want SkipRetry", err)
	}
	if e.up.count() != 1 {
		t.Errorf("upstream saw %d requests, want 1", e.up.count())
	}
}

func TestHandlerHeldAccountSendsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 429, header: map[string]string{"Retry-After": "30"}})
	_ = e.run(e.task(sampleUpdate("acct-1")))
	// Another update of the same account is not admitted, so nothing is sent;
	// another account goes.
	other := sampleUpdate("acct-1")
	other.ID = "org-2"
	second := e.task(other)
	if err := e.run(second); !errors.Is(err, errNotAdmitted) {
		t.Fatalf("err = %v, want the held account's update not admitted", err)
	}
	if e.up.count() != 1 {
		t.Fatalf("upstream saw %d requests, want 1 (the held account sent again)", e.up.count())
	}
	if err := e.run(e.task(sampleUpdate("acct-2"))); err != nil {
		t.Fatalf("other account: %v", err)
	}
	// Once the window has passed, acct-1 goes again.
	e.now = e.now.Add(31 * time.Second)
	if err := e.run(second); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if e.up.count() != 3 {
		t.Errorf("upstream saw %d requests, want 3", e.up.count())
	}
}

func TestHandlerParkedUntilResumed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 401, body: `{"statusCode":401,"error":"Unauthorized","message":"needs reauth","truto_is_remote_error":true}`})
	task := e.task(sampleUpdate("acct-1"))
	_ = e.run(task)
	e.now = e.now.Add(24 * time.Hour)
	if err := e.run(task); !errors.Is(err, errNotAdmitted) {
		t.Fatalf("parked run err = %v, want it not admitted", err)
	}
	if e.up.count() != 1 {
		t.Fatalf("a parked account sent %d requests, want 1", e.up.count())
	}
	if ok, err := e.store.Accounts().Resume(context.Background(), "acct-1"); err != nil || !ok {
		t.Fatalf("resume = %v, %v", ok, err)
	}
	if err := e.run(task); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	rec, _ := e.store.Ledger().Get(context.Background(), taskIDOf(t, task))
	if rec.Spent != 0 || rec.State != StatusCompleted {
		t.Errorf("record %+v: want completed with no budget spent", rec)
	}
}

func TestHandlerBudgetExhausted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{MaxRetry: 2}, answer{status: 500}, answer{status: 500}, answer{status: 500}, answer{status: 500})
	task := e.task(sampleUpdate("acct-1"))
	for i := 1; i <= 2; i++ {
		if err := e.run(task); !errors.Is(err, asynq.RevokeTask) {
			t.Fatalf("run %d: err = %v, want the update back in admission", i, err)
		}
		if rec, _ := e.store.Ledger().Get(context.Background(), taskIDOf(t, task)); rec.Spent != i {
			t.Fatalf("run %d: spent %d, want %d", i, rec.Spent, i)
		}
	}
	err := e.run(task)
	if !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("run 3: err = %v, want dead", err)
	}
	d, err := e.store.DeadLetters().Get(context.Background(), taskIDOf(t, task))
	if err != nil || d.Class != ClassExhausted || d.Attempts != 3 || d.StatusCode != 500 {
		t.Errorf("dead letter = %+v, %v", d, err)
	}
	keys := map[string]bool{}
	for _, k := range e.up.keys {
		keys[k] = true
	}
	if len(keys) != 1 {
		t.Errorf("idempotency keys across attempts = %v, want one", keys)
	}
}

func TestHandlerConnectionBlipsRetriedInCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 0}, answer{status: 0}, answer{status: 200, body: `{"id":"org-1"}`})
	task := e.task(sampleUpdate("acct-1"))
	if err := e.run(task); err != nil {
		t.Fatalf("ProcessTask: %v", err)
	}
	rec, _ := e.store.Ledger().Get(context.Background(), taskIDOf(t, task))
	if e.up.count() != 3 || rec.Spent != 0 || rec.Attempts != 3 {
		t.Errorf("requests %d, record %+v: want 3 requests, 3 attempts, nothing spent", e.up.count(), rec)
	}
	hist, _ := e.store.Ledger().Attempts(context.Background(), rec.TaskID)
	if len(hist) != 3 || hist[0].Class != "possibly_applied" || hist[2].Class != "success" {
		t.Errorf("history = %+v", hist)
	}
}

func TestHandlerExpiredAndMalformed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{MaxAge: time.Hour})
	task := e.task(sampleUpdate("acct-1"))
	e.now = e.now.Add(2 * time.Hour)
	if err := e.run(task); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("expired: err = %v", err)
	}
	d, err := e.store.DeadLetters().Get(context.Background(), taskIDOf(t, task))
	if err != nil || d.Class != ClassExpired {
		t.Errorf("expired dead letter = %+v, %v", d, err)
	}
	for _, payload := range []string{`not json`, `{"v":99}`, `{"v":1,"id":"","integrated_account_id":"a","body":{}}`, `{"v":1,"id":"x","integrated_account_id":"a","body":[1]}`} {
		if err := e.handler.ProcessTask(context.Background(), asynq.NewTask(TypeUpdateOrganization, []byte(payload))); !errors.Is(err, asynq.SkipRetry) {
			t.Errorf("payload %s: err = %v, want dead", payload, err)
		}
		if ev := e.lastEvent(); ev.Class != ClassMalformed {
			t.Errorf("payload %s: class = %s", payload, ev.Class)
		}
	}
	if e.up.count() != 0 {
		t.Errorf("upstream saw %d requests, want 0", e.up.count())
	}
}

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	p := Policy{RetryBase: time.Second, RetryCap: 10 * time.Second, RetryJitter: -1} // -1: no jitter
	// asynq retries a run only after trouble before an outcome was recorded.
	for n, want := range map[int]time.Duration{0: time.Second, 2: 4 * time.Second, 20: 10 * time.Second} {
		if got := p.RetryDelay(n, errors.New("redis: connection refused"), nil); got != want {
			t.Errorf("RetryDelay(%d) = %s, want %s", n, got, want)
		}
	}
	if got := p.RetryDelay(3, asynq.ErrLeaseExpired, nil); got != DefaultCrashRetryDelay {
		t.Errorf("RetryDelay(lease expired) = %s, want %s", got, DefaultCrashRetryDelay)
	}
	if IsFailure(asynq.ErrLeaseExpired) {
		t.Error("a crashed worker's lease expiry must not count as a failure")
	}
	// Jitter stays within ±20 %.
	pj := Policy{RetryBase: time.Second}
	for i := 0; i < 200; i++ {
		if d := pj.Backoff(1); d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("Backoff(1) = %s, outside ±20%% of 1s", d)
		}
	}
}

// After an operator purges a dead letter, the same key enqueued again is sent.
func TestPurgeForgetsDeadState(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 422, body: `{"statusCode":422,"error":"Unprocessable Entity","message":"no"}`})
	task := e.task(sampleUpdate("acct-1"))
	_ = e.run(task)
	ctx := context.Background()
	id := taskIDOf(t, task)
	d, err := e.store.DeadLetters().Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := e.store.Operator().Purge(ctx, d); !ok || err != nil {
		t.Fatalf("Purge = %v, %v", ok, err)
	}
	e.add(mustDecode(t, task)) // the same key enqueued again
	if err := e.run(task); err != nil {
		t.Fatalf("after purge: %v", err)
	}
	if e.up.count() != 2 {
		t.Errorf("upstream saw %d requests, want 2 (the purged update was not sent again)", e.up.count())
	}
	if _, err := e.store.DeadLetters().Get(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("dead letter after purge: %v, want not found", err)
	}
}

// blockingSender answers 200 after the caller's context is cancelled, as a
// PATCH that landed just as the worker was told to stop.
type blockingSender struct {
	cancel context.CancelFunc
	inner  Sender
}

func (b blockingSender) UpdateOrganization(ctx context.Context, req *trutoclient.UpdateOrganizationRequest) (*trutoclient.Organization, *trutoclient.Response, error) {
	org, res, err := b.inner.UpdateOrganization(context.WithoutCancel(ctx), req)
	b.cancel()
	return org, res, err
}

func TestHandlerSuccessAsContextEndsIsKept(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	client, _ := trutoclient.New("tok", trutoclient.WithBaseURL(e.up.srv.URL))
	ctx, cancel := context.WithCancel(context.Background())
	h := NewHandler(blockingSender{cancel: cancel, inner: client}, e.store, Policy{}, WithHandlerClock(func() time.Time { return e.now }))
	task := e.task(sampleUpdate("acct-1"))
	tt, err := e.admit(task)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ProcessTask(ctx, tt); err != nil {
		t.Fatalf("ProcessTask: %v", err)
	}
	rec, _ := e.store.Ledger().Get(context.Background(), taskIDOf(t, task))
	if rec.State != StatusCompleted {
		t.Fatalf("a 2xx that arrived as the context ended was not recorded: %+v", rec)
	}
}

func TestHandlerStoppingWorkerSpendsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 500})
	client, _ := trutoclient.New("tok", trutoclient.WithBaseURL(e.up.srv.URL))
	ctx, cancel := context.WithCancel(context.Background())
	h := NewHandler(blockingSender{cancel: cancel, inner: client}, e.store, Policy{}, WithHandlerClock(func() time.Time { return e.now }))
	task := e.task(sampleUpdate("acct-1"))
	tt, err := e.admit(task)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ProcessTask(ctx, tt); !errors.Is(err, asynq.RevokeTask) {
		t.Fatalf("err = %v, want the update back in admission", err)
	}
	e.waiting(taskIDOf(t, task))
	rec, _ := e.store.Ledger().Get(context.Background(), taskIDOf(t, task))
	if rec.Spent != 0 {
		t.Errorf("a run cut short by a stopping worker spent %d budget, want 0", rec.Spent)
	}
}

func TestHandlerRejectedTokenHoldsEveryAccount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 401, body: `{"statusCode":401,"error":"Unauthorized","message":"Invalid API token"}`})
	_ = e.run(e.task(sampleUpdate("acct-1")))
	// Another account waits too, without a request.
	other := e.task(sampleUpdate("acct-2"))
	if err := e.run(other); !errors.Is(err, errNotAdmitted) {
		t.Fatalf("other account: err = %v, want it not admitted", err)
	}
	if e.up.count() != 1 {
		t.Fatalf("upstream saw %d requests, want 1", e.up.count())
	}
	if ok, _ := e.store.Accounts().Resume(context.Background(), AllAccounts); !ok {
		t.Fatal("no hold on all accounts to resume")
	}
	if err := e.run(other); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

func TestHandlerDeadLetterWithoutMarkSendsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	task := e.task(sampleUpdate("acct-1"))
	id := taskIDOf(t, task)
	// A crash between writing the dead letter and marking the ledger.
	if err := e.store.DeadLetters().Put(context.Background(), DeadLetter{TaskID: id, IdempotencyKey: taskKey(t, task), DeadAt: e.now}); err != nil {
		t.Fatal(err)
	}
	if err := e.run(task); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want SkipRetry", err)
	}
	if e.up.count() != 0 {
		t.Errorf("upstream saw %d requests for a dead-lettered update", e.up.count())
	}
	if rec, _ := e.store.Ledger().Get(context.Background(), id); rec.State != StatusDead {
		t.Errorf("ledger state %q, want dead", rec.State)
	}
}

func TestScheduledUpdateBudgetStartsWhenDue(t *testing.T) {
	t.Parallel()
	p, store, _ := newProducer(t)
	at := time.Now().Add(96 * time.Hour)
	got, err := p.Enqueue(context.Background(), sampleUpdate("a"), At(at))
	if err != nil {
		t.Fatal(err)
	}
	st, ok, err := store.Scheduler().Update(context.Background(), got.TaskID)
	if err != nil || !ok {
		t.Fatalf("admission state: %v, %v", ok, err)
	}
	if !st.NotBefore.Equal(at.Truncate(time.Millisecond)) {
		t.Errorf("admission lets it go at %v, want %v", st.NotBefore, at)
	}
	pl, _ := DecodePayload(st.Payload)
	if pl.EnqueuedAt.Before(at.Add(-time.Second)) {
		t.Errorf("enqueued_at = %v for an update due %v: it would expire on arrival", pl.EnqueuedAt, at)
	}
}

// A replayed update runs even while its dead letter is still there (replay
// removes it only after the re-enqueue).
func TestHandlerReplayedRunsBeforeDeadLetterRemoved(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	u := sampleUpdate("acct-1")
	u.IdempotencyKey = "replayed-key"
	id := TaskID(u.IntegratedAccountID, u.IdempotencyKey)
	if err := e.store.DeadLetters().Put(context.Background(), DeadLetter{TaskID: id, IdempotencyKey: u.IdempotencyKey, DeadAt: e.now}); err != nil {
		t.Fatal(err)
	}
	if err := e.run(e.add(Payload{Version: PayloadVersion, Update: u, EnqueuedAt: e.now, Replays: 1})); err != nil {
		t.Fatalf("replayed run: %v", err)
	}
	if e.up.count() != 1 {
		t.Errorf("upstream saw %d requests, want 1", e.up.count())
	}
}

// TestAttemptHistoryThreeFailuresThenSuccess: an update that fails three
// different ways and then succeeds shows every attempt in its status.
func TestAttemptHistoryThreeFailuresThenSuccess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{},
		answer{status: 500, body: `{"statusCode":500,"error":"Internal Server Error","message":"Truto hiccup"}`},
		answer{status: 429, header: map[string]string{"Retry-After": "3", "Ratelimit-Remaining": "0"}, body: `{"statusCode":429,"error":"Too Many Requests","message":"slow down"}`},
		answer{status: 502, body: `bad gateway`},
		answer{status: 200, header: map[string]string{"Ratelimit-Remaining": "41"}, body: `{"id":"org-1","name":"Acme"}`},
	)
	u := sampleUpdate("acct-1")
	u.IdempotencyKey = "history-key"
	task := e.task(u)
	for i := 0; i < 4; i++ {
		_ = e.run(task)
		e.now = e.now.Add(5 * time.Second) // past every backoff and the 429's hold
	}
	st, err := e.store.Operator().Find(context.Background(), Lookup{Ref: "history-key", Account: "acct-1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Status           int
		Class, RateLimit string
	}
	var got []row
	for _, a := range st.History {
		got = append(got, row{a.StatusCode, a.Class, a.RateLimit})
		if !a.Sent || a.At.IsZero() || a.Reason == "" {
			t.Errorf("attempt %+v lacks time, sent or reason", a)
		}
	}
	want := []row{{500, "transient", ""}, {429, "rate_limited", "0"}, {502, "possibly_applied", ""}, {200, "success", "41"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	if st.History[0].Message != "Truto hiccup" || st.History[1].RetryAfter != "3" {
		t.Errorf("history lost Truto's message or Retry-After: %+v", st.History[:2])
	}
	if st.State != StatusCompleted || st.Result == nil || st.Result.Attempts != 4 || st.Spent != 2 {
		t.Errorf("status = state %s, result %+v, spent %d; want completed after 4 attempts, 2 spent (the 429 spent none)", st.State, st.Result, st.Spent)
	}
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly", 7, "exactly"},
		{"abcdef", 3, "abc..."},
		{"héllo", 2, "h..."}, // é is 2 bytes: not cut in half
		{"日本語", 4, "日..."},   // 3-byte characters
		{"😀x", 3, "..."},     // a 4-byte character that does not fit
		{"a😀", 5, "a😀"},      // fits exactly
		{"a😀b", 5, "a😀..."},  // cut after it
		{strings.Repeat("é", 600), MaxReasonBytes, strings.Repeat("é", 512) + "..."},
	}
	for _, tt := range tests {
		got := truncate(tt.in, tt.n)
		if diff := cmp.Diff(tt.want, got); diff != "" || !utf8.ValidString(got) {
			t.Errorf("truncate(%q, %d) (-want +got):\n%s", tt.in, tt.n, diff)
		}
	}
}

func mustDecode(t *testing.T, task *asynq.Task) Payload {
	t.Helper()
	p, err := DecodePayload(task.Payload())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHandlerStaleTicketSendsNothing: a ticket whose update went back to
// admission since (its lease ran out while its worker was silent) is dropped
// without a request, and the update's current ticket runs.
func TestHandlerStaleTicketSendsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	ctx := context.Background()
	task := e.task(sampleUpdate("acct-1"))
	stale, err := e.admit(task)
	if err != nil {
		t.Fatal(err)
	}
	e.now = e.now.Add(admission.DefaultLease + time.Second)
	if n, err := e.adm.Reap(ctx, 10); err != nil || n != 1 {
		t.Fatalf("Reap = %d, %v; want the admitted update put back", n, err)
	}
	if err := e.handler.ProcessTask(ctx, stale); !errors.Is(err, asynq.RevokeTask) || e.lastEvent().Outcome != OutcomeStale {
		t.Fatalf("stale ticket: %v (%+v), want it dropped", err, e.lastEvent())
	}
	if e.up.count() != 0 {
		t.Fatalf("a stale ticket sent %d requests", e.up.count())
	}
	if err := e.run(task); err != nil {
		t.Fatalf("current ticket: %v", err)
	}
	if e.up.count() != 1 {
		t.Errorf("upstream saw %d requests, want 1", e.up.count())
	}
}

// TestHandlerLearnsFromRateLimits: a 429 lowers the account's admitted
// rate, and ratelimit-limit below the ceiling sets it.
func TestHandlerLearnsFromRateLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{},
		answer{status: 429, header: map[string]string{"Retry-After": "1"}},
		answer{status: 200, header: map[string]string{"Ratelimit-Limit": "2;w=1"}, body: `{"id":"org-1"}`})
	ctx := context.Background()
	task := e.task(sampleUpdate("acct-1"))
	_ = e.run(task)
	after429, _ := e.adm.Account(ctx, "acct-1")
	if after429.LearnedRate <= 0 {
		t.Fatalf("after a 429 the account has no learned rate: %+v", after429)
	}
	if err := e.run(task); err != nil {
		t.Fatal(err)
	}
	after, _ := e.adm.Account(ctx, "acct-1")
	if after.LearnedRate < 1.8 || after.LearnedRate > 2 {
		t.Errorf("after ratelimit-limit 2;w=1: learned %v/s, want about 2/s (less the headroom)", after.LearnedRate)
	}
}

func TestStatedLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want ratelimit.Limit
		ok   bool
	}{
		{"110;w=10", ratelimit.Limit{Requests: 110, Window: 10 * time.Second}, true},
		{" 5 ; w=1", ratelimit.Limit{Requests: 5, Window: time.Second}, true},
		{"110", ratelimit.Limit{}, false},
		{"110;w=0", ratelimit.Limit{}, false},
		{"x;w=10", ratelimit.Limit{}, false},
		{"10;w=999999", ratelimit.Limit{}, false},
		{"", ratelimit.Limit{}, false},
	}
	for _, tt := range tests {
		got, ok := statedLimit(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("statedLimit(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
