package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/sethvargo/go-retry"

	"github.com/orgsync/orgsync/trutoclient"
)

// MaxResultBody bounds the response body kept as an update's result.
const MaxResultBody = 1 << 20

// Sender sends one Update Organization request; *trutoclient.Client is one.
type Sender interface {
	UpdateOrganization(ctx context.Context, req *trutoclient.UpdateOrganizationRequest) (*trutoclient.Organization, *trutoclient.Response, error)
}

// Event is what the handler reports after each run, for metrics and progress displays.
type Event struct {
	TaskID     string
	Account    string
	Outcome    string // "completed", "retry", "waiting", "dead"
	Class      string // trutoclient class, or ClassMalformed/ClassExpired/ClassExhausted, or "skipped" when the ledger already knew the answer
	StatusCode int
	Latency    time.Duration
	Reason     string
	Sent       int // requests sent in this run
}

// Outcomes of one run.
const (
	OutcomeCompleted = "completed"
	OutcomeRetry     = "retry"
	OutcomeWaiting   = "waiting"
	OutcomeDead      = "dead"
)

// Handler runs organization updates. It implements asynq.Handler.
//
// Contract, per run of a task (DESIGN.md "Failure policy"):
//   - a payload that cannot be read is dead-lettered (class malformed);
//   - an update the ledger already knows as completed is not sent again: its
//     stored result is written back and the run succeeds;
//   - an update older than Policy.MaxAge is dead-lettered (class expired);
//   - an update whose account is rate limited or parked waits (*WaitError):
//     nothing is sent and no budget is spent;
//   - otherwise one PATCH is sent (with up to Policy.InCallRetries quick
//     retries for connection-level failures), under the update's idempotency
//     key, and the answer is classified by trutoclient.Classify:
//     2xx completes with the response stored; a permanent error is
//     dead-lettered at once; 429 pauses the account for every worker and
//     waits; 401 or an account-blocked 503 parks the account and waits;
//     a transient or possibly-applied failure spends one unit of budget and
//     returns *RetryError, or is dead-lettered (class exhausted) once more than
//     Policy.MaxRetry units are spent.
//
// Dead-lettered runs return an error wrapping asynq.SkipRetry, so asynq's
// archive mirrors the dead letter for the queue UI.
type Handler struct {
	sender  Sender
	store   *Store
	policy  Policy
	now     func() time.Time
	logger  *slog.Logger
	observe func(Event)
}

// HandlerOption configures a Handler.
type HandlerOption func(*Handler)

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) HandlerOption { return func(h *Handler) { h.logger = l } }

// WithObserver receives an Event after every run.
func WithObserver(fn func(Event)) HandlerOption { return func(h *Handler) { h.observe = fn } }

// WithHandlerClock injects the clock (tests).
func WithHandlerClock(now func() time.Time) HandlerOption { return func(h *Handler) { h.now = now } }

// NewHandler returns a Handler sending through sender and keeping records in store.
func NewHandler(sender Sender, store *Store, policy Policy, opts ...HandlerOption) *Handler {
	h := &Handler{
		sender:  sender,
		store:   store,
		policy:  policy.withDefaults(),
		now:     time.Now,
		logger:  slog.New(slog.DiscardHandler),
		observe: func(Event) {},
	}
	for _, o := range opts {
		o(h)
	}
	return h
}

// Policy returns the effective policy (defaults filled in).
func (h *Handler) Policy() Policy { return h.policy }

// ProcessTask runs one update; see Handler for the contract.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	queue, _ := asynq.GetQueueName(ctx)
	taskID, _ := asynq.GetTaskID(ctx)

	p, err := DecodePayload(t.Payload())
	if err != nil {
		if taskID == "" {
			taskID = "unknown"
		}
		d := DeadLetter{TaskID: taskID, Queue: queue, RawPayload: rawExcerpt(t.Payload(), 64<<10),
			Class: ClassMalformed, Reason: err.Error(), DeadAt: h.now().UTC()}
		return h.deadLetter(ctx, d, Event{TaskID: taskID, Class: ClassMalformed, Reason: err.Error()})
	}
	if taskID == "" {
		taskID = TaskID(p.IdempotencyKey)
	}
	ev := Event{TaskID: taskID, Account: p.IntegratedAccountID}

	rec, err := h.store.Get(ctx, taskID)
	if err != nil {
		return err // Redis trouble: a failure, but our budget is untouched
	}
	switch rec.State {
	case StateCompleted:
		// Applied before (a crash after the PATCH, or a re-enqueue): never twice.
		if rec.Result != nil {
			h.writeResult(t, *rec.Result)
		}
		ev.Outcome, ev.Class, ev.Reason = OutcomeCompleted, "skipped", "already completed"
		h.observe(ev)
		return nil
	case StateDead:
		ev.Outcome, ev.Class, ev.Reason = OutcomeDead, "skipped", "already dead-lettered"
		h.observe(ev)
		return fmt.Errorf("already dead-lettered: %w", asynq.SkipRetry)
	}

	maxRetry := h.policy.MaxRetry
	if p.MaxRetry > 0 {
		maxRetry = p.MaxRetry
	}
	base := DeadLetter{TaskID: taskID, Queue: queue, Update: p.Update, IdempotencyKey: p.IdempotencyKey,
		EnqueuedAt: p.EnqueuedAt, Run: p.Run, Replays: p.Replays, MaxRetry: maxRetry,
		Attempts: rec.Attempts, FirstAttemptAt: rec.FirstAttemptAt, LastAttemptAt: rec.LastAttemptAt}

	now := h.now()
	if age := now.Sub(p.EnqueuedAt); age > h.policy.MaxAge {
		base.Class, base.DeadAt = ClassExpired, now.UTC()
		base.Reason = fmt.Sprintf("expired: enqueued %s ago, over the %s budget (--max-age)", age.Round(time.Second), h.policy.MaxAge)
		ev.Class, ev.Reason = ClassExpired, base.Reason
		return h.deadLetter(ctx, base, ev)
	}

	if hold, held, err := h.store.AccountHold(ctx, p.IntegratedAccountID); err != nil {
		return err
	} else if held {
		return h.wait(ctx, taskID, h.holdDelay(hold, now), "account "+hold.Kind+": "+hold.Reason, ev)
	}

	res, decision, sent, err := h.send(ctx, taskID, p)
	if err != nil {
		return err
	}
	ev.Sent, ev.Class, ev.StatusCode, ev.Reason = sent, decision.Class.String(), decision.StatusCode, decision.Reason
	if res != nil {
		ev.Latency = res.Latency
	}
	if ctx.Err() != nil {
		// The worker is stopping (or the task's deadline passed) mid-request: the
		// answer is unknown, the key makes a re-send safe, and it is not the update's fault.
		return h.wait(context.WithoutCancel(ctx), taskID, time.Second, "worker stopped mid-request", ev)
	}

	switch decision.Class {
	case trutoclient.ClassSuccess:
		return h.complete(ctx, t, taskID, p, res, decision, ev)
	case trutoclient.ClassPermanent:
		base.Class, base.StatusCode, base.Reason = decision.Class.String(), decision.StatusCode, decision.Reason
		if res != nil {
			base.ErrorBody = rawExcerpt(res.Body, MaxDeadLetterErrorBody)
		}
		return h.deadLetter(ctx, h.withLedger(ctx, base), ev)
	case trutoclient.ClassRateLimited:
		until := now.Add(decision.Delay)
		if err := h.store.PauseAccount(ctx, p.IntegratedAccountID, until, decision.StatusCode, decision.Reason); err != nil {
			return err
		}
		h.logger.Info("account rate limited", "account", p.IntegratedAccountID, "until", until, "reason", decision.Reason)
		return h.wait(ctx, taskID, decision.Delay, "rate limited: "+decision.Reason, ev)
	case trutoclient.ClassAccountAttention:
		if err := h.store.ParkAccount(ctx, p.IntegratedAccountID, decision.StatusCode, decision.Reason); err != nil {
			return err
		}
		h.logger.Warn("account parked: its updates wait until `enqueue accounts resume`",
			"account", p.IntegratedAccountID, "status", decision.StatusCode, "reason", decision.Reason)
		return h.wait(ctx, taskID, h.policy.ParkedRecheck, "account parked: "+decision.Reason, ev)
	}

	// Transient or possibly applied: the budget pays for it.
	spent, err := h.store.rdb.HGet(ctx, h.store.recKey(taskID), "spent").Int()
	if err != nil {
		spent = 0
	}
	if spent > maxRetry {
		base.Class, base.StatusCode = ClassExhausted, decision.StatusCode
		base.Reason = fmt.Sprintf("retry budget of %d spent; last failure: %s", maxRetry, decision.Reason)
		if res != nil {
			base.ErrorBody = rawExcerpt(res.Body, MaxDeadLetterErrorBody)
		}
		ev.Class = ClassExhausted
		return h.deadLetter(ctx, h.withLedger(ctx, base), ev)
	}
	ev.Outcome = OutcomeRetry
	h.observe(ev)
	return &RetryError{Spent: spent, Decision: decision}
}

// send makes the attempt, retrying connection-level failures a few times in
// the same run. Every request is recorded in the attempt history; the run as a
// whole spends at most one unit of budget.
func (h *Handler) send(ctx context.Context, taskID string, p Payload) (*trutoclient.Response, trutoclient.Decision, int, error) {
	req := &trutoclient.UpdateOrganizationRequest{
		ID: p.ID, IntegratedAccountID: p.IntegratedAccountID, Body: p.Body,
		Options: p.Options, IdempotencyKey: p.IdempotencyKey,
	}
	var (
		res      *trutoclient.Response
		decision trutoclient.Decision
		sent     int
	)
	backoff := retry.WithJitterPercent(20, retry.NewExponential(h.policy.InCallBase))
	if h.policy.InCallRetries > 0 {
		backoff = retry.WithMaxRetries(uint64(h.policy.InCallRetries), backoff)
	} else {
		backoff = retry.WithMaxRetries(0, backoff)
	}
	var storeErr error
	_ = retry.Do(ctx, backoff, func(ctx context.Context) error {
		_, r, err := h.sender.UpdateOrganization(ctx, req)
		sent++
		res, decision = r, trutoclient.Classify(r, err)
		spend := decision.Class == trutoclient.ClassTransient || decision.Class == trutoclient.ClassPossiblyApplied
		retryable := spend && r == nil && ctx.Err() == nil // no HTTP answer at all: a connection-level blip
		a := Attempt{At: h.now().UTC(), Sent: true, StatusCode: decision.StatusCode, Class: decision.Class.String(), Reason: decision.Reason}
		if r != nil {
			a.LatencyMS = r.Latency.Milliseconds()
			a.RateLimit = r.Header.Get("Ratelimit-Remaining")
			a.RetryAfter = r.Header.Get("Retry-After")
		}
		var apiErr *trutoclient.APIError
		if errors.As(err, &apiErr) {
			a.Message = truncate(apiErr.Message, 500)
		}
		lastErr := ""
		if decision.Class != trutoclient.ClassSuccess {
			lastErr = decision.Reason
		}
		// Only the final try of the run spends budget.
		if _, err := h.store.recordAttempt(context.WithoutCancel(ctx), taskID, a, spend && (!retryable || sent > h.policy.InCallRetries), lastErr); err != nil {
			storeErr = err
			return nil
		}
		if retryable {
			return retry.RetryableError(errors.New(decision.Reason))
		}
		return nil
	})
	if storeErr != nil {
		return nil, decision, sent, storeErr
	}
	return res, decision, sent, nil
}

func (h *Handler) complete(ctx context.Context, t *asynq.Task, taskID string, p Payload, res *trutoclient.Response, d trutoclient.Decision, ev Event) error {
	rec, err := h.store.Get(ctx, taskID)
	if err != nil {
		return err
	}
	result := Result{TaskID: taskID, IdempotencyKey: p.IdempotencyKey, StatusCode: res.StatusCode,
		Attempts: rec.Attempts, FirstAttemptAt: rec.FirstAttemptAt, CompletedAt: h.now().UTC(),
		Replayed: res.Header.Get("Idempotent-Replayed") == "true"}
	if len(res.Header) > 0 {
		result.Header = make(map[string]string, len(res.Header))
		for k := range res.Header {
			result.Header[k] = res.Header.Get(k)
		}
	}
	body := res.Body
	if len(body) > MaxResultBody {
		result.BodyText = rawExcerpt(body, MaxResultBody)
	} else if json.Valid(body) {
		result.Body = body
	} else {
		result.BodyText = rawExcerpt(body, MaxResultBody)
	}
	if err := h.store.complete(context.WithoutCancel(ctx), taskID, result); err != nil {
		return err
	}
	h.writeResult(t, result)
	if d.Delay > 0 {
		// The answer said the window is used up: hold the account for everyone.
		_ = h.store.PauseAccount(ctx, p.IntegratedAccountID, h.now().Add(d.Delay), res.StatusCode, "ratelimit-remaining is 0")
	}
	ev.Outcome = OutcomeCompleted
	h.observe(ev)
	return nil
}

func (h *Handler) writeResult(t *asynq.Task, r Result) {
	w := t.ResultWriter()
	if w == nil {
		return
	}
	b, err := json.Marshal(r)
	if err == nil {
		_, _ = w.Write(b) // a copy for the queue UI; the ledger holds the real one
	}
}

func (h *Handler) wait(ctx context.Context, taskID string, d time.Duration, reason string, ev Event) error {
	// Shown by `enqueue status`; failure to write it changes nothing.
	_ = h.store.rdb.HSet(ctx, h.store.recKey(taskID), "last_error", "waiting: "+reason).Err()
	ev.Outcome = OutcomeWaiting
	if ev.Reason == "" {
		ev.Reason = reason
	}
	h.observe(ev)
	return &WaitError{Delay: d, Reason: reason}
}

func (h *Handler) holdDelay(hold Hold, now time.Time) time.Duration {
	if hold.Kind == HoldParked {
		return h.policy.ParkedRecheck
	}
	return max(hold.Until.Sub(now), time.Second)
}

// withLedger fills the attempt figures of a dead letter from the ledger.
func (h *Handler) withLedger(ctx context.Context, d DeadLetter) DeadLetter {
	if rec, err := h.store.Get(ctx, d.TaskID); err == nil {
		d.Attempts, d.FirstAttemptAt, d.LastAttemptAt = rec.Attempts, rec.FirstAttemptAt, rec.LastAttemptAt
	}
	d.DeadAt = h.now().UTC()
	return d
}

func (h *Handler) deadLetter(ctx context.Context, d DeadLetter, ev Event) error {
	ctx = context.WithoutCancel(ctx) // a dead letter is written even while stopping
	if d.DeadAt.IsZero() {
		d.DeadAt = h.now().UTC()
	}
	if err := h.store.PutDeadLetter(ctx, d); err != nil {
		return err // not SkipRetry: asynq retries, and the dead letter is written next time
	}
	if err := h.store.markDead(ctx, d.TaskID, d.Reason); err != nil {
		return err
	}
	h.logger.Info("update dead-lettered", "task_id", d.TaskID, "account", d.Update.IntegratedAccountID,
		"class", d.Class, "status", d.StatusCode, "reason", d.Reason)
	ev.Outcome = OutcomeDead
	if ev.Class == "" {
		ev.Class = d.Class
	}
	h.observe(ev)
	return fmt.Errorf("%s: %w", d.Reason, asynq.SkipRetry)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
