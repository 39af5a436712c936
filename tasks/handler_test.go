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
	handler *Handler
	up      *upstream
	now     time.Time
	events  []Event
}

func newEnv(t *testing.T, policy Policy, script ...answer) *env {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	e := &env{t: t, mr: mr, up: newUpstream(t, script...), now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	clock := func() time.Time { return e.now }
	e.store = NewStore(rdb, WithClock(clock))
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

func (e *env) task(u Update) *asynq.Task {
	e.t.Helper()
	if u.IdempotencyKey == "" {
		u.IdempotencyKey = NewKey()
	}
	b, err := EncodePayload(Payload{Update: u, EnqueuedAt: e.now})
	if err != nil {
		e.t.Fatal(err)
	}
	return asynq.NewTask(TypeUpdateOrganization, b)
}

func (e *env) run(task *asynq.Task) error {
	return e.handler.ProcessTask(context.Background(), task)
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
	rec, err := e.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != StateCompleted || rec.Result == nil || rec.Result.StatusCode != 200 || string(rec.Result.Body) != `{"id":"org-1","name":"Acme"}` {
		t.Fatalf("record = %+v, result %+v; want completed with the body", rec, rec.Result)
	}
	if rec.Result.Attempts != 1 || rec.Spent != 0 {
		t.Errorf("attempts %d spent %d; want 1 and 0", rec.Result.Attempts, rec.Spent)
	}
	if got, want := e.up.keys[0], UpstreamKey("acct-1", taskKey(t, task)); got != want {
		t.Errorf("Idempotency-Key = %q, want %q, derived from the update's account and key", got, want)
	}
	// Run again (a crash after the PATCH, or asynq re-delivering): nothing is sent twice.
	if err := e.run(task); err != nil {
		t.Fatalf("second ProcessTask: %v", err)
	}
	if got := e.up.count(); got != 1 {
		t.Errorf("upstream saw %d requests, want 1", got)
	}
	if ev := e.lastEvent(); ev.Outcome != OutcomeCompleted || ev.Class != "skipped" {
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
		wantOutcome string
		wantWait    time.Duration // for waits
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
		{"401 parks", answer{status: 401, body: `{"statusCode":401,"error":"Unauthorized","message":"reauth","truto_is_remote_error":true}`}, OutcomeWaiting, DefaultParkedRecheck, HoldParked, 0, false},
		{"503 Truto body parks", answer{status: 503, body: trutoJSON(503, "account blocked")}, OutcomeWaiting, DefaultParkedRecheck, HoldParked, 0, false},
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
			var we *WaitError
			var re *RetryError
			switch tc.wantOutcome {
			case OutcomeDead:
				if !errors.Is(err, asynq.SkipRetry) {
					t.Errorf("err = %v, want SkipRetry", err)
				}
			case OutcomeWaiting:
				if !errors.As(err, &we) || we.Delay != tc.wantWait {
					t.Errorf("err = %v, want a wait of %s", err, tc.wantWait)
				}
				if IsFailure(err) {
					t.Error("IsFailure(wait) = true; a wait must not count against the update")
				}
			case OutcomeRetry:
				if !errors.As(err, &re) || re.Spent != tc.wantSpent {
					t.Errorf("err = %v, want RetryError with %d spent", err, tc.wantSpent)
				}
				if !IsFailure(err) {
					t.Error("IsFailure(retry) = false")
				}
			}
			_, dlqErr := e.store.DeadLetter(ctx, id)
			if gotDead := dlqErr == nil; gotDead != tc.wantDead {
				t.Errorf("dead letter exists = %v, want %v", gotDead, tc.wantDead)
			}
			hold, held, err := e.store.AccountHold(ctx, "acct-1")
			if err != nil {
				t.Fatal(err)
			}
			if gotHold := map[bool]string{true: hold.Kind}[held]; gotHold != tc.wantHold {
				t.Errorf("hold = %q, want %q", gotHold, tc.wantHold)
			}
			rec, _ := e.store.Get(ctx, id)
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
	d, err := e.store.DeadLetter(context.Background(), TaskID("acct-9", "my-key-1"))
	if err != nil {
		t.Fatal(err)
	}
	if d.StatusCode != 422 || d.Class != "permanent" || d.ErrorBody != body || d.IdempotencyKey != "my-key-1" ||
		d.Update.ID != "org-1" || d.Attempts != 1 || d.FirstAttemptAt.IsZero() || d.LastAttemptAt.IsZero() || d.DeadAt.IsZero() {
		t.Errorf("dead letter = %+v", d)
	}
	// The ledger says dead: a re-delivery sends nothing.
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
	// Another update of the same account waits without a request; another account goes.
	err := e.run(e.task(sampleUpdate("acct-1")))
	var we *WaitError
	if !errors.As(err, &we) || we.Delay != 30*time.Second {
		t.Fatalf("err = %v, want a 30s wait", err)
	}
	if e.up.count() != 1 {
		t.Fatalf("upstream saw %d requests, want 1 (the held account sent again)", e.up.count())
	}
	if err := e.run(e.task(sampleUpdate("acct-2"))); err != nil {
		t.Fatalf("other account: %v", err)
	}
	// Once the window has passed, acct-1 goes again.
	e.now = e.now.Add(31 * time.Second)
	if err := e.run(e.task(sampleUpdate("acct-1"))); err != nil {
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
	if err := e.run(task); IsFailure(err) {
		t.Fatalf("parked run err = %v, want a wait", err)
	}
	if e.up.count() != 1 {
		t.Fatalf("a parked account sent %d requests, want 1", e.up.count())
	}
	if ok, err := e.store.ResumeAccount(context.Background(), "acct-1"); err != nil || !ok {
		t.Fatalf("resume = %v, %v", ok, err)
	}
	if err := e.run(task); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	rec, _ := e.store.Get(context.Background(), taskIDOf(t, task))
	if rec.Spent != 0 || rec.State != StateCompleted {
		t.Errorf("record %+v: want completed with no budget spent", rec)
	}
}

func TestHandlerBudgetExhausted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{MaxRetry: 2}, answer{status: 500}, answer{status: 500}, answer{status: 500}, answer{status: 500})
	task := e.task(sampleUpdate("acct-1"))
	for i := 1; i <= 2; i++ {
		var re *RetryError
		if err := e.run(task); !errors.As(err, &re) || re.Spent != i {
			t.Fatalf("run %d: err = %v, want RetryError spent %d", i, err, i)
		}
	}
	err := e.run(task)
	if !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("run 3: err = %v, want dead", err)
	}
	d, err := e.store.DeadLetter(context.Background(), taskIDOf(t, task))
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
	rec, _ := e.store.Get(context.Background(), taskIDOf(t, task))
	if e.up.count() != 3 || rec.Spent != 0 || rec.Attempts != 3 {
		t.Errorf("requests %d, record %+v: want 3 requests, 3 attempts, nothing spent", e.up.count(), rec)
	}
	hist, _ := e.store.Attempts(context.Background(), rec.TaskID)
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
	d, err := e.store.DeadLetter(context.Background(), taskIDOf(t, task))
	if err != nil || d.Class != ClassExpired {
		t.Errorf("expired dead letter = %+v, %v", d, err)
	}
	for _, payload := range []string{`not json`, `{"v":99}`, `{"v":1,"id":"","integrated_account_id":"a","body":{}}`, `{"v":1,"id":"x","integrated_account_id":"a","body":[1]}`} {
		if err := e.run(asynq.NewTask(TypeUpdateOrganization, []byte(payload))); !errors.Is(err, asynq.SkipRetry) {
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
	tests := []struct {
		err  error
		want time.Duration
	}{
		{&WaitError{Delay: 7 * time.Second}, 8 * time.Second}, // +1 s: asynq rounds retry times down to the second
		{&RetryError{Spent: 1}, time.Second},
		{&RetryError{Spent: 3}, 4 * time.Second},
		{&RetryError{Spent: 20}, 10 * time.Second},
		{asynq.ErrLeaseExpired, DefaultCrashRetryDelay},
	}
	for _, tc := range tests {
		if got := p.RetryDelay(0, tc.err, nil); got != tc.want {
			t.Errorf("RetryDelay(%v) = %s, want %s", tc.err, got, tc.want)
		}
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
	d, err := e.store.DeadLetter(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := e.store.Purge(ctx, d); !ok || err != nil {
		t.Fatalf("Purge = %v, %v", ok, err)
	}
	if err := e.run(task); err != nil {
		t.Fatalf("after purge: %v", err)
	}
	if e.up.count() != 2 {
		t.Errorf("upstream saw %d requests, want 2 (the purged update was not sent again)", e.up.count())
	}
	if _, err := e.store.DeadLetter(ctx, id); !errors.Is(err, ErrNotFound) {
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
	if err := h.ProcessTask(ctx, task); err != nil {
		t.Fatalf("ProcessTask: %v", err)
	}
	rec, _ := e.store.Get(context.Background(), taskIDOf(t, task))
	if rec.State != StateCompleted {
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
	err := h.ProcessTask(ctx, task)
	var we *WaitError
	if !errors.As(err, &we) {
		t.Fatalf("err = %v, want a wait", err)
	}
	rec, _ := e.store.Get(context.Background(), taskIDOf(t, task))
	if rec.Spent != 0 {
		t.Errorf("a run cut short by a stopping worker spent %d budget, want 0", rec.Spent)
	}
}

func TestHandlerRejectedTokenHoldsEveryAccount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{}, answer{status: 401, body: `{"statusCode":401,"error":"Unauthorized","message":"Invalid API token"}`})
	_ = e.run(e.task(sampleUpdate("acct-1")))
	// Another account waits too, without a request.
	if err := e.run(e.task(sampleUpdate("acct-2"))); !errors.As(err, new(*WaitError)) {
		t.Fatalf("other account: err = %v, want a wait", err)
	}
	if e.up.count() != 1 {
		t.Fatalf("upstream saw %d requests, want 1", e.up.count())
	}
	if ok, _ := e.store.ResumeAccount(context.Background(), AllAccounts); !ok {
		t.Fatal("no hold on all accounts to resume")
	}
	if err := e.run(e.task(sampleUpdate("acct-2"))); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

func TestHandlerDeadLetterWithoutMarkSendsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	task := e.task(sampleUpdate("acct-1"))
	id := taskIDOf(t, task)
	// A crash between writing the dead letter and marking the ledger.
	if err := e.store.PutDeadLetter(context.Background(), DeadLetter{TaskID: id, IdempotencyKey: taskKey(t, task), DeadAt: e.now}); err != nil {
		t.Fatal(err)
	}
	if err := e.run(task); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want SkipRetry", err)
	}
	if e.up.count() != 0 {
		t.Errorf("upstream saw %d requests for a dead-lettered update", e.up.count())
	}
	if rec, _ := e.store.Get(context.Background(), id); rec.State != StateDead {
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
	info, err := asynq.NewInspectorFromRedisClient(store.rdb).GetTaskInfo(DefaultQueue, got.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	pl, _ := DecodePayload(info.Payload)
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
	if err := e.store.PutDeadLetter(context.Background(), DeadLetter{TaskID: id, IdempotencyKey: u.IdempotencyKey, DeadAt: e.now}); err != nil {
		t.Fatal(err)
	}
	b, _ := EncodePayload(Payload{Update: u, EnqueuedAt: e.now, Replays: 1})
	if err := e.run(asynq.NewTask(TypeUpdateOrganization, b)); err != nil {
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
	st, err := e.store.Find(context.Background(), Lookup{Ref: "history-key", Account: "acct-1"}, nil)
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
