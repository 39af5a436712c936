package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/sethvargo/go-retry"

	"github.com/orgsync/orgsync/trutoclient"
)

// MaxResultBody bounds the response body kept as an update's result.
const MaxResultBody = 1 << 20

// MaxReasonBytes bounds the reason of one attempt's outcome as the handler
// keeps it (attempt history, ledger, dead letter, logs): room for a transport
// error's whole cause (a TLS failure says why only at its end), not for an
// upstream that answers with a novel.
const MaxReasonBytes = 1 << 10

// maxMessageBytes bounds Truto's error message kept in an attempt.
const maxMessageBytes = 500

// Sender sends one Update Organization request; *trutoclient.Client is one.
type Sender interface {
	UpdateOrganization(ctx context.Context, req *trutoclient.UpdateOrganizationRequest) (*trutoclient.Organization, *trutoclient.Response, error)
}

// Limiter spaces requests to stay under Truto's limits, shared by every
// worker (internal/ratelimit). Reserve either grants a slot wait from now
// (at most a second or so), or refuses and says when the update's turn may
// come (the account's backlog ahead of it included).
type Limiter interface {
	Reserve(ctx context.Context, account, updateID string) (ok bool, wait time.Duration, err error)
}

// Breaker is a circuit breaker on upstream health, shared by every worker
// (internal/circuit). While it is open, updates wait without spending budget.
type Breaker interface {
	Allow(ctx context.Context) (allow, probe bool, wait time.Duration, reason string, err error)
	Record(ctx context.Context, failed, probe bool) error
	// NoteWaiting remembers an update that waits on the open circuit.
	NoteWaiting(ctx context.Context, queue, taskID string) error
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
	limiter Limiter
	breaker Breaker
}

// HandlerOption configures a Handler.
type HandlerOption func(*Handler)

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) HandlerOption { return func(h *Handler) { h.logger = l } }

// WithObserver receives an Event after every run.
func WithObserver(fn func(Event)) HandlerOption { return func(h *Handler) { h.observe = fn } }

// WithLimiter spaces requests under shared rate limits before sending.
func WithLimiter(l Limiter) HandlerOption { return func(h *Handler) { h.limiter = l } }

// WithBreaker gates sending on a shared circuit breaker.
func WithBreaker(b Breaker) HandlerOption { return func(h *Handler) { h.breaker = b } }

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
		taskID = p.TaskID()
	}
	ev := Event{TaskID: taskID, Account: p.IntegratedAccountID}

	rec, err := h.store.Get(ctx, taskID)
	if err != nil {
		return err // Redis trouble: a failure, but our budget is untouched
	}
	switch {
	case rec.State == StateCompleted:
		// Applied before (a crash after the PATCH, or a re-enqueue): never twice.
		if rec.Result != nil {
			h.writeResult(t, *rec.Result)
		}
		_ = h.store.leaveLine(ctx, p.Update, taskID, true, p.origin()) // in case a crash came first
		ev.Outcome, ev.Class, ev.Reason = OutcomeCompleted, "skipped", "already completed"
		h.observe(ev)
		return nil
	case rec.State == StateDead || (rec.DeadLettered && h.deadLetterIsCurrent(ctx, taskID, p)):
		// A dead letter exists: finish marking it (a crash may have come in
		// between) and send nothing, so a dead update can never also apply.
		if rec.State != StateDead {
			if err := h.durably(ctx, func(ctx context.Context) error { return h.store.markDead(ctx, taskID, "dead-lettered") }); err != nil {
				return err
			}
		}
		_ = h.store.leaveLine(ctx, p.Update, taskID, false, 0)
		ev.Outcome, ev.Class, ev.Reason = OutcomeDead, "skipped", "already dead-lettered"
		h.observe(ev)
		return fmt.Errorf("already dead-lettered: %w", asynq.SkipRetry)
	}

	maxRetry := h.policy.MaxRetry
	if p.MaxRetry > 0 {
		maxRetry = p.MaxRetry
	}
	base := DeadLetter{TaskID: taskID, Queue: queue, Update: p.Update, IdempotencyKey: p.IdempotencyKey,
		EnqueuedAt: p.EnqueuedAt, Run: p.Run, Replays: p.Replays, MaxRetry: maxRetry, OrderSeq: p.OrderSeq, OriginSeq: p.origin(),
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
		ev.Class = "account_" + hold.Kind
		return h.wait(ctx, taskID, h.holdDelay(hold, now), "account "+hold.Kind+": "+hold.Reason, ev)
	}

	// One at a time per organization, in enqueue order.
	if p.OrderSeq > 0 {
		head, err := h.store.ahead(ctx, p.Update, taskID, h.policy.OrphanGrace)
		if err != nil {
			return err
		}
		if head != "" {
			ev.Class = "ordering"
			w := h.store.headWait(ctx, p.Update, head)
			d := w + time.Duration(rand.Int64N(int64(DefaultOrderWait)))
			return h.wait(ctx, taskID, d, "waiting for the earlier update "+head+" of organization "+p.ID, ev)
		}
	}

	probe := false
	if h.breaker != nil {
		allow, pr, wait, reason, err := h.breaker.Allow(ctx)
		if err != nil {
			return err
		}
		if !allow {
			ev.Class = "circuit_open"
			// Remembered so that the circuit's closing can call it back at once.
			_ = h.breaker.NoteWaiting(ctx, queue, taskID)
			return h.wait(ctx, taskID, wait, reason, ev)
		}
		probe = pr
	}
	if ok, why, err := h.takeSlot(ctx, p.IntegratedAccountID, taskID); err != nil {
		return err
	} else if !ok {
		ev.Class = "rate_limit"
		return h.wait(ctx, taskID, why.Delay, why.Reason, ev)
	}

	a := h.send(ctx, taskID, p, probe)
	decision, res := a.decision, a.res
	ev.Sent, ev.Class, ev.StatusCode, ev.Reason = a.sent, decision.Class.String(), decision.StatusCode, decision.Reason
	if res != nil {
		ev.Latency = res.Latency
	}
	if decision.Class == trutoclient.ClassSuccess {
		// Applied: record it whatever happens to this run's context, or the
		// next run would send it again.
		return h.complete(context.WithoutCancel(ctx), t, taskID, p, rec, a, ev)
	}
	if a.storeErr != nil {
		return a.storeErr
	}
	if ctx.Err() != nil {
		// The worker is stopping (or the lease or deadline ran out) mid-request:
		// the answer is unknown, the key makes a re-send safe, and it is not the
		// update's fault, so nothing was spent.
		ev.Class = "stopping"
		return h.wait(context.WithoutCancel(ctx), taskID, time.Second, "worker stopped mid-request", ev)
	}

	switch decision.Class {
	case trutoclient.ClassPermanent:
		base.Class, base.StatusCode, base.Reason = decision.Class.String(), decision.StatusCode, decision.Reason
		if res != nil {
			base.ErrorBody = rawExcerpt(res.Body, MaxDeadLetterErrorBody)
		}
		return h.deadLetter(ctx, h.withLedger(ctx, base), ev)
	case trutoclient.ClassRateLimited:
		until := h.now().Add(decision.Delay) // from the answer, not from before the request
		if err := h.store.PauseAccount(ctx, p.IntegratedAccountID, until, decision.StatusCode, decision.Reason); err != nil {
			return err
		}
		h.logger.Info("account rate limited", "account", p.IntegratedAccountID, "until", until, "reason", decision.Reason)
		return h.wait(ctx, taskID, decision.Delay, "rate limited: "+decision.Reason, ev)
	case trutoclient.ClassAccountAttention:
		account, what := p.IntegratedAccountID, "account parked"
		if a.tokenRejected {
			// Our token is bad: every account would get the same answer.
			account, what = AllAccounts, "all accounts parked: the API token was rejected"
		}
		if err := h.store.ParkAccount(ctx, account, decision.StatusCode, decision.Reason); err != nil {
			return err
		}
		h.logger.Warn(what+"; its updates wait until `enqueue accounts resume "+account+"`",
			"account", account, "status", decision.StatusCode, "reason", decision.Reason)
		return h.wait(ctx, taskID, h.policy.ParkedRecheck, what+": "+decision.Reason, ev)
	}

	// Transient or possibly applied: the budget pays for it.
	if a.spent > maxRetry {
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
	return &RetryError{Spent: a.spent, Decision: decision}
}

// takeSlot reserves a rate-limit slot for account and waits for it. When
// the next slot is too far off it takes none and returns the wait to hand back.
func (h *Handler) takeSlot(ctx context.Context, account, taskID string) (bool, *WaitError, error) {
	if h.limiter == nil {
		return true, nil, nil
	}
	ok, wait, err := h.limiter.Reserve(ctx, account, taskID)
	if err != nil {
		return false, nil, err
	}
	if !ok {
		// The wait already counts the account's backlog ahead of this update;
		// a little jitter keeps neighbours from coming back in the same second.
		d := wait + time.Duration(rand.Int64N(int64(wait/4)+1))
		return false, &WaitError{Delay: d, Reason: fmt.Sprintf("rate limit: account %s's turn in about %s", account, wait.Round(time.Millisecond))}, nil
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false, &WaitError{Delay: time.Second, Reason: "worker stopped while waiting for a rate-limit slot"}, nil
		case <-t.C:
		}
	}
	return true, nil, nil
}

// deadLetterIsCurrent tells a dead update whose ledger was not marked from a
// replayed one: a replay re-enqueues before it removes the dead letter, with a
// higher replay count in the payload than in the dead letter (and the dead
// letter may be gone by the time it is read).
func (h *Handler) deadLetterIsCurrent(ctx context.Context, taskID string, p Payload) bool {
	d, err := h.store.DeadLetter(ctx, taskID)
	if err != nil {
		return false // removed since (a replay finishing), or unreadable: not proof of death
	}
	return d.Replays >= p.Replays
}

// attempt is the outcome of one run's sending.
type attempt struct {
	res           *trutoclient.Response
	decision      trutoclient.Decision
	sent          int       // requests made
	spent         int       // budget spent so far, after this run
	first         time.Time // when this run's first request went out
	tokenRejected bool      // a 401 that blames our API token, not the account
	storeErr      error     // recording the attempt failed
}

// send makes the attempt, retrying connection-level failures a few times in
// the same run. Every request is recorded in the attempt history; the run as a
// whole spends at most one unit of budget, and none when the run's context
// ended (a stopping worker is not the update's fault) or the run was the open
// circuit's probe.
func (h *Handler) send(ctx context.Context, taskID string, p Payload, probe bool) attempt {
	req := &trutoclient.UpdateOrganizationRequest{
		ID: p.ID, IntegratedAccountID: p.IntegratedAccountID, Body: p.Body,
		Options: p.Options, IdempotencyKey: p.UpstreamKey(),
	}
	var a attempt
	backoff := retry.WithJitterPercent(20, retry.NewExponential(h.policy.InCallBase))
	backoff = retry.WithMaxRetries(uint64(max(h.policy.InCallRetries, 0)), backoff)
	_ = retry.Do(ctx, backoff, func(ctx context.Context) error {
		if a.sent > 0 {
			// An in-call retry is a request like any other: it needs a slot.
			if ok, _, err := h.takeSlot(ctx, p.IntegratedAccountID, taskID); err != nil || !ok {
				// No slot soon: end the run with the failure in hand, which
				// then pays for the run (it was spared as a try to be retried).
				if !probe && ctx.Err() == nil {
					if spent, err := h.store.spendOne(context.WithoutCancel(ctx), taskID); err == nil {
						a.spent = spent
					}
				}
				return nil
			}
		}
		at := h.now().UTC()
		if a.first.IsZero() {
			a.first = at
		}
		_, r, err := h.sender.UpdateOrganization(ctx, req)
		a.sent++
		a.res, a.decision = r, trutoclient.Classify(r, err)
		a.decision.Reason = truncate(a.decision.Reason, MaxReasonBytes)
		failed := a.decision.Class == trutoclient.ClassTransient || a.decision.Class == trutoclient.ClassPossiblyApplied
		if h.breaker != nil && ctx.Err() == nil {
			// Health is shared knowledge; a failure to record it changes nothing here.
			_ = h.breaker.Record(context.WithoutCancel(ctx), failed, probe && a.sent == 1)
		}
		retryable := failed && r == nil && ctx.Err() == nil // no HTTP answer at all: a connection-level blip
		rec := Attempt{At: at, Sent: true, StatusCode: a.decision.StatusCode, Class: a.decision.Class.String(), Reason: a.decision.Reason}
		if r != nil {
			rec.LatencyMS = r.Latency.Milliseconds()
			rec.RateLimit = r.Header.Get("Ratelimit-Remaining")
			rec.RetryAfter = r.Header.Get("Retry-After")
		}
		var apiErr *trutoclient.APIError
		if errors.As(err, &apiErr) {
			rec.Message = truncate(apiErr.Message, maxMessageBytes)
			a.tokenRejected = apiErr.StatusCode == 401 && !apiErr.IsRemoteError
		}
		lastErr := ""
		if a.decision.Class != trutoclient.ClassSuccess {
			lastErr = a.decision.Reason
		}
		// Only the last try of the run spends, and only if the run was not cut short.
		// A probe of an open circuit is the breaker's question, not the update's
		// failure: it spends nothing either.
		spend := failed && !probe && ctx.Err() == nil && (!retryable || a.sent > h.policy.InCallRetries)
		spent, err := h.store.recordAttempt(context.WithoutCancel(ctx), taskID, rec, spend, lastErr)
		if err != nil {
			a.storeErr = err
			return nil
		}
		a.spent = spent
		if retryable {
			return retry.RetryableError(errors.New(a.decision.Reason))
		}
		return nil
	})
	return a
}

func (h *Handler) complete(ctx context.Context, t *asynq.Task, taskID string, p Payload, rec Record, a attempt, ev Event) error {
	res := a.res
	first := rec.FirstAttemptAt
	if first.IsZero() {
		first = a.first
	}
	result := Result{TaskID: taskID, IdempotencyKey: p.IdempotencyKey, StatusCode: res.StatusCode,
		Attempts: rec.Attempts + a.sent, FirstAttemptAt: first, CompletedAt: h.now().UTC(),
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
	if err := h.durably(ctx, func(ctx context.Context) error { return h.store.complete(ctx, taskID, result) }); err != nil {
		// The update is applied but the ledger could not say so: the next run
		// re-sends under the same key, and Truto's idempotency cache answers it.
		h.logger.Error("update applied but its result could not be stored; it will be re-sent with the same idempotency key",
			"task_id", taskID, "error", err.Error())
		return err
	}
	h.writeResult(t, result)
	if err := h.durably(ctx, func(ctx context.Context) error { return h.store.leaveLine(ctx, p.Update, taskID, true, p.origin()) }); err != nil {
		// The next update of the organization clears a finished head itself.
		h.logger.Warn("could not take a completed update out of its organization's line", "task_id", taskID, "error", err.Error())
	}
	if a.decision.Delay > 0 {
		// The answer said the window is used up: hold the account for everyone.
		_ = h.store.PauseAccount(ctx, p.IntegratedAccountID, h.now().Add(a.decision.Delay), res.StatusCode, "ratelimit-remaining is 0")
	}
	ev.Outcome = OutcomeCompleted
	h.observe(ev)
	return nil
}

// durably runs a ledger write that must not be lost to a passing Redis blip,
// retrying it a few times in this run before giving up.
func (h *Handler) durably(ctx context.Context, write func(context.Context) error) error {
	ctx = context.WithoutCancel(ctx)
	b := retry.WithMaxRetries(5, retry.WithJitterPercent(20, retry.NewExponential(50*time.Millisecond)))
	return retry.Do(ctx, b, func(ctx context.Context) error {
		if err := write(ctx); err != nil {
			return retry.RetryableError(err)
		}
		return nil
	})
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
	_ = h.store.noteWaiting(ctx, taskID, reason)
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
	if err := h.durably(ctx, func(ctx context.Context) error { return h.store.PutDeadLetter(ctx, d) }); err != nil {
		return err // not SkipRetry: asynq retries, and the dead letter is written next time
	}
	// Once the dead letter exists, a later run sends nothing even if this
	// mark is lost (ProcessTask checks for the dead letter itself).
	if err := h.durably(ctx, func(ctx context.Context) error { return h.store.markDead(ctx, d.TaskID, d.Reason) }); err != nil {
		return err
	}
	if d.Update.ID != "" {
		// A dead update must not hold back its organization's later updates.
		_ = h.durably(ctx, func(ctx context.Context) error { return h.store.leaveLine(ctx, d.Update, d.TaskID, false, 0) })
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

// truncate cuts s to at most n bytes plus "...", never inside a UTF-8
// character, so the result stays valid text.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
