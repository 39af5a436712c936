package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/sethvargo/go-retry"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/trutoclient"
)

// MaxResultBody bounds the response body kept as an update's result: the
// client reads no more of a 2xx body than this.
const MaxResultBody = trutoclient.DefaultMaxResponseBody

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

// Breaker learns upstream health from every answer, shared by every worker
// (internal/circuit). Admission asks it before admitting; the handler only
// reports.
type Breaker interface {
	Record(ctx context.Context, account string, failed, probe bool) error
}

// Event is what the handler reports after each run, for metrics and progress displays.
type Event struct {
	TaskID string
	// QueueTaskID is the id asynq ran it under: one admission of the update
	// (RunTaskID), "" for an event with no asynq task.
	QueueTaskID string
	Account     string
	Outcome     Outcome
	Class       Class
	StatusCode  int
	Latency     time.Duration
	Reason      string
	Sent        int // requests sent in this run
	// EnqueuedAt is when the update was enqueued (when it was due, for a
	// scheduled one); zero when its payload could not be read.
	EnqueuedAt time.Time
}

// Handler runs admitted organization updates. It implements asynq.Handler.
//
// Waiting happens before the handler, in admission: a run is an update that
// may be sent now. Contract, per run of a task:
//   - a payload that cannot be read is dead-lettered (class malformed);
//   - a task that did not come through admission (queued by an older
//     producer) joins admission and ends; a stale ticket ends at once;
//   - an update the ledger already knows as completed is not sent again: its
//     stored result is written back and the run succeeds;
//   - an update older than Policy.MaxAge is dead-lettered (class expired);
//   - otherwise one PATCH is sent (with up to Policy.InCallRetries quick
//     retries for connection-level failures), under the update's idempotency
//     key, and the answer is classified by trutoclient.Classify and settled:
//     2xx completes with the response stored; a permanent error is
//     dead-lettered; 429 holds the account's lane and lowers its learned
//     rate; 401 or an account-blocked 503 parks the account (all accounts
//     when the API token was rejected); a transient failure spends one unit
//     of budget and goes back to admission after its backoff, or is
//     dead-lettered (class exhausted) once more than its budget is spent.
//
// Runs that put the update back return asynq.RevokeTask (asynq keeps no
// copy; admission holds the update). Dead-lettered runs return an error
// wrapping asynq.SkipRetry, so asynq's archive mirrors the dead letter for the
// queue UI.
type Handler struct {
	sender  Sender
	store   *Store
	policy  Policy
	now     func() time.Time
	logger  *slog.Logger
	observe func(Event)
	breaker Breaker
	leases  *admission.Leases
}

// HandlerOption configures a Handler.
type HandlerOption func(*Handler)

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) HandlerOption { return func(h *Handler) { h.logger = l } }

// WithObserver receives an Event after every run.
func WithObserver(fn func(Event)) HandlerOption { return func(h *Handler) { h.observe = fn } }

// WithBreaker reports every answer to a shared circuit breaker.
func WithBreaker(b Breaker) HandlerOption { return func(h *Handler) { h.breaker = b } }

// WithLeases holds a lease on each running update in the worker's lease set,
// whose heartbeat keeps it; by default the handler holds its own set, which
// nothing renews (tests).
func WithLeases(l *admission.Leases) HandlerOption { return func(h *Handler) { h.leases = l } }

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
	if h.leases == nil {
		h.leases = admission.NewLeases(store.adm, NewKey())
	}
	return h
}

// Policy returns the effective policy (defaults filled in).
func (h *Handler) Policy() Policy { return h.policy }

// run is one run of one update: what ProcessTask knows as it goes.
type run struct {
	task  *asynq.Task
	id    string
	gen   int64
	probe bool
	p     Payload
	rec   Record
	ev    Event
}

// ProcessTask runs one admitted update; see Handler for the contract.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	r, err := h.begin(ctx, t)
	if r == nil {
		return err // malformed, queued before admission, stale or held: begin settled it
	}
	defer h.leases.Release(r.id, r.gen)
	if done, err := h.known(ctx, r); done {
		return err
	}
	if age := h.now().Sub(r.p.EnqueuedAt); age > h.policy.MaxAge {
		reason := fmt.Sprintf("expired: enqueued %s ago, over the %s budget (--max-age)", age.Round(time.Second), h.policy.MaxAge)
		return h.deadLetter(ctx, r, ClassExpired, 0, reason, nil)
	}
	a := h.send(ctx, r)
	return h.settle(ctx, r, a)
}

// begin reads the task and claims the update from admission, reading its
// ledger record in the same round trip. It returns nil (and what the run
// returns) when there is nothing to send: a malformed payload, a task from
// before admission, a stale ticket, or an account held since admission.
func (h *Handler) begin(ctx context.Context, t *asynq.Task) (*run, error) {
	p, err := DecodePayload(t.Payload())
	if err != nil {
		return nil, h.malformed(ctx, t, err)
	}
	r := &run{task: t, id: p.TaskID(), p: p}
	qid, _ := asynq.GetTaskID(ctx)
	r.ev = Event{TaskID: r.id, QueueTaskID: qid, Account: p.IntegratedAccountID, EnqueuedAt: p.EnqueuedAt}
	gen, probe, admitted := ticketOf(t)
	if !admitted {
		return nil, h.join(ctx, r)
	}
	r.gen, r.probe = gen, probe
	var start func() (admission.Started, bool, error)
	var read func() (Record, error)
	_ = h.store.pipelined(ctx, func(pipe redis.Pipeliner) { // each command's error is read below
		start = h.store.adm.StartIn(ctx, pipe, p.IntegratedAccountID, r.id, gen, h.leases.Owner())
		read = h.store.ledger.getIn(ctx, pipe, r.id)
	})
	place, ok, serr := start()
	if serr != nil {
		return nil, serr // Redis trouble: asynq runs it again; nothing was sent
	}
	switch {
	case place.Held:
		// Its account was held (a 429 of an update sent just before) or
		// parked after it was admitted: sending would only meet the same answer.
		r.ev.Outcome, r.ev.Class, r.ev.Reason = OutcomeWaiting, WaitHeld, "its account was held after it was admitted: back in its lane"
		h.observe(r.ev)
		return nil, asynq.RevokeTask
	case !ok:
		r.ev.Outcome, r.ev.Reason = OutcomeStale, "stale ticket: admission has this update elsewhere"
		h.observe(r.ev)
		return nil, asynq.RevokeTask
	}
	h.leases.Hold(p.IntegratedAccountID, r.id, gen)
	r.p.OrderSeq, r.p.OriginSeq = place.Seq, place.Origin
	if r.rec, err = read(); err != nil {
		defer h.leases.Release(r.id, gen)
		r.ev.Class = WaitLedger
		return nil, h.putBack(ctx, r, time.Second, "the ledger could not be read: "+err.Error())
	}
	return r, nil
}

// malformed dead-letters a payload that cannot be read.
func (h *Handler) malformed(ctx context.Context, t *asynq.Task, cause error) error {
	taskID, _ := asynq.GetTaskID(ctx)
	if id, _, ok := strings.Cut(taskID, "."); ok {
		taskID = id
	}
	if taskID == "" {
		taskID = "unknown"
	}
	queue, _ := asynq.GetQueueName(ctx)
	d := DeadLetter{TaskID: taskID, Queue: queue, RawPayload: rawExcerpt(t.Payload(), 64<<10),
		Class: ClassMalformed, Reason: cause.Error(), DeadAt: h.now().UTC()}
	if err := h.durably(ctx, func(ctx context.Context) error { return h.store.dead.Put(ctx, d) }); err != nil {
		return err
	}
	_, _ = h.store.adm.Finish(context.WithoutCancel(ctx), "", taskID, admission.AnyGeneration)
	h.logger.Info("update dead-lettered", "task_id", taskID, "class", ClassMalformed, "reason", d.Reason)
	h.observe(Event{TaskID: taskID, Outcome: OutcomeDead, Class: ClassMalformed, Reason: d.Reason})
	return fmt.Errorf("%s: %w", d.Reason, asynq.SkipRetry)
}

// join puts a task that was queued straight into asynq (by a producer from
// before admission) into admission, where it waits its turn like any other.
func (h *Handler) join(ctx context.Context, r *run) error {
	queue, _ := asynq.GetQueueName(ctx)
	if queue == "" {
		queue = DefaultQueue
	}
	_, err := h.store.adm.Add(ctx, admission.Item{ID: r.id, Account: r.p.IntegratedAccountID, Org: orgKey(r.p.Update),
		Queue: queue, Payload: r.task.Payload(), Origin: r.p.origin()})
	if err != nil {
		return err
	}
	r.ev.Outcome, r.ev.Class, r.ev.Reason = OutcomeWaiting, WaitJoined, "queued before admission: joined its account's lane"
	h.observe(r.ev)
	return asynq.RevokeTask
}

// known ends the run when the ledger already knows the update's outcome.
func (h *Handler) known(ctx context.Context, r *run) (bool, error) {
	switch {
	case r.rec.State == StatusCompleted:
		// Applied before (a crash after the PATCH, or a re-enqueue): never twice.
		// Its outcome event may not have been written before the crash: at least once.
		e := OutcomeEvent{Type: EventCompleted}
		end := ledgerEnd{state: StatusCompleted}
		if res := r.rec.Result; res != nil {
			e.StatusCode, e.Attempts = res.StatusCode, res.Attempts
			end.write = func(ctx context.Context) ([]string, error) {
				return h.store.ledger.complete(ctx, r.id, r.rec.Update, *res, nil, false)
			}
		}
		if err := h.end(ctx, r, e, withRun(r.rec.Runs, r.p.Run), nil, end); err != nil {
			return true, err
		}
		r.ev.Outcome, r.ev.Class, r.ev.Reason = OutcomeCompleted, ClassSkipped, "already completed"
		h.observe(r.ev)
		return true, nil
	case r.rec.State == StatusDead || (r.rec.DeadLettered && h.deadLetterIsCurrent(ctx, r.id, r.p)):
		// A dead letter exists: finish marking it (a crash may have come in
		// between) and send nothing, so a dead update can never also apply.
		runs := withRun(r.rec.Runs, r.p.Run)
		if r.rec.State != StatusDead {
			if err := h.durably(ctx, func(ctx context.Context) (err error) {
				runs, err = h.store.ledger.markDead(ctx, r.id, "dead-lettered")
				runs = withRun(runs, r.p.Run)
				return err
			}); err != nil {
				return true, err
			}
		}
		e := OutcomeEvent{Type: EventDead}
		end := ledgerEnd{state: StatusDead}
		if d, err := h.store.dead.Get(ctx, r.id); err == nil {
			e.StatusCode, e.Class, e.Reason, e.Attempts = d.StatusCode, d.Class, d.Reason, d.Attempts
			end.write = func(ctx context.Context) ([]string, error) { return h.store.dead.deadLettered(ctx, d) }
		}
		if err := h.end(ctx, r, e, runs, nil, end); err != nil {
			return true, err
		}
		r.ev.Outcome, r.ev.Class, r.ev.Reason = OutcomeDead, ClassSkipped, "already dead-lettered"
		h.observe(r.ev)
		return true, fmt.Errorf("already dead-lettered: %w", asynq.SkipRetry)
	}
	return false, nil
}

// settle records the answer and decides where the update goes: one line per
// class of trutoclient.Classify.
func (h *Handler) settle(ctx context.Context, r *run, a attempt) error {
	d := a.decision
	r.ev.Sent, r.ev.Class, r.ev.StatusCode, r.ev.Reason = a.sent, ClassOf(d.Class), d.StatusCode, d.Reason
	if a.res != nil {
		r.ev.Latency = a.res.Latency
	}
	account := r.p.IntegratedAccountID
	switch {
	case d.Class == trutoclient.ClassSuccess:
		// Applied: recorded whatever happens to this run's context, or the
		// next run would send it again.
		return h.complete(context.WithoutCancel(ctx), r, a)
	case a.storeErr != nil:
		r.ev.Class = WaitLedger
		return h.putBack(ctx, r, time.Second, "the attempt could not be recorded: "+a.storeErr.Error())
	case ctx.Err() != nil:
		r.ev.Class = WaitStopping
		// The worker is stopping (or the deadline ran out) mid-request: the
		// answer is unknown, the key makes a re-send safe, and it is not the
		// update's fault, so nothing was spent.
		return h.putBack(ctx, r, 0, "worker stopped mid-request")
	case d.Class == trutoclient.ClassPermanent:
		return h.deadLetter(ctx, r, ClassOf(d.Class), d.StatusCode, d.Reason, a.res)
	case d.Class == trutoclient.ClassRateLimited:
		// The hold was set as soon as the answer came (send); now the update waits.
		whose := "account"
		if a.scope == admission.ScopeToken {
			whose = "API token"
		}
		return h.putBack(ctx, r, d.Delay, whose+" rate limited: "+d.Reason)
	case d.Class == trutoclient.ClassAccountAttention:
		what := "account parked"
		if d.TokenRejected {
			// Our token is bad: every account would get the same answer.
			account, what = AllAccounts, "all accounts parked: the API token was rejected"
		}
		if err := h.store.accounts.Park(ctx, account, d.StatusCode, d.Reason); err != nil {
			return err
		}
		h.logger.Warn(what+"; its updates wait until `enqueue accounts resume "+account+"`",
			"account", account, "status", d.StatusCode, "reason", d.Reason)
		return h.putBack(ctx, r, 0, what+": "+d.Reason)
	case a.spent > h.maxRetry(r.p):
		reason := fmt.Sprintf("retry budget of %d spent; last failure: %s", h.maxRetry(r.p), d.Reason)
		r.ev.Class = ClassExhausted
		return h.deadLetter(ctx, r, ClassExhausted, d.StatusCode, reason, a.res)
	}
	// Transient or possibly applied: the budget paid for it. An account whose
	// requests keep failing holds its whole lane back for a while.
	if !r.probe { // a failed probe is Truto's, not the account's
		if held, err := h.store.adm.Failed(ctx, account); err == nil && held > 0 {
			h.logger.Info("account's requests keep failing: its lane waits", "account", account, "for", held, "reason", d.Reason)
		}
	}
	return h.backOff(ctx, r, h.policy.Backoff(a.spent), d.Reason)
}

// rateLimited holds the account's lane (or the token) for a 429 and lowers
// the admitted rate; it says whose limit it was.
func (h *Handler) rateLimited(ctx context.Context, account string, res *trutoclient.Response, d trutoclient.Decision) admission.Scope {
	until := h.now().Add(d.Delay) // from the answer, not from before the request
	var stated ratelimit.Limit
	if res != nil {
		stated, _ = statedLimit(res.RateLimit.Limit)
	}
	scope, err := h.store.adm.RateLimited(context.WithoutCancel(ctx), account, until, stated, d.Reason, d.StatusCode)
	if err != nil {
		h.logger.Warn("could not hold a rate-limited account", "account", account, "error", err.Error())
	}
	whose := "account"
	if scope == admission.ScopeToken {
		whose = "API token"
	}
	h.logger.Info(whose+" rate limited", "account", account, "until", until, "reason", d.Reason)
	return scope
}

func (h *Handler) maxRetry(p Payload) int {
	if p.MaxRetry > 0 {
		return p.MaxRetry
	}
	return h.policy.MaxRetry
}

// putBack returns the update to its lane without spending budget, to go no
// earlier than d from now (and no earlier than its account's hold or park allow).
func (h *Handler) putBack(ctx context.Context, r *run, d time.Duration, reason string) error {
	r.ev.Outcome = OutcomeWaiting
	return h.requeue(ctx, r, d, reason)
}

// backOff returns the update to its lane after a failure that spent budget.
func (h *Handler) backOff(ctx context.Context, r *run, d time.Duration, reason string) error {
	r.ev.Outcome = OutcomeRetry
	return h.requeue(ctx, r, d, reason)
}

func (h *Handler) requeue(ctx context.Context, r *run, d time.Duration, reason string) error {
	ctx = context.WithoutCancel(ctx)
	if r.ev.Reason == "" {
		r.ev.Reason = reason
	}
	// Shown by `enqueue status`; failure to write it changes nothing.
	_ = h.store.ledger.noteWaiting(ctx, r.id, reason)
	if _, err := h.store.adm.Retry(ctx, r.p.IntegratedAccountID, r.id, r.gen, h.now().Add(d)); err != nil {
		// Its lease runs out and admission puts it back; asynq need not keep it.
		h.logger.Warn("could not put an update back in its lane; it goes again when its lease runs out",
			"task_id", r.id, "error", err.Error())
	}
	h.observe(r.ev)
	return asynq.RevokeTask
}

// deadLetterIsCurrent tells a dead update whose ledger was not marked from a
// replayed one: a replay re-enqueues before it removes the dead letter, with a
// higher replay count in the payload than in the dead letter (and the dead
// letter may be gone by the time it is read).
func (h *Handler) deadLetterIsCurrent(ctx context.Context, taskID string, p Payload) bool {
	d, err := h.store.dead.Get(ctx, taskID)
	if err != nil {
		return false // removed since (a replay finishing), or unreadable: not proof of death
	}
	return d.Replays >= p.Replays
}

// attempt is the outcome of one run's sending.
type attempt struct {
	res      *trutoclient.Response
	decision trutoclient.Decision
	sent     int             // requests made
	spent    int             // budget spent so far, after this run
	first    time.Time       // when this run's first request went out
	storeErr error           // recording the attempt failed
	scope    admission.Scope // whose limit a 429 was
	applied  *Attempt        // the request that applied it, not yet recorded
}

// failed says the last answer was a failure that spends budget: transient,
// or possibly applied.
func (a *attempt) failed() bool {
	return a.decision.Class == trutoclient.ClassTransient || a.decision.Class == trutoclient.ClassPossiblyApplied
}

// send makes the attempt, retrying connection-level failures a few times in
// the same run: each try is one request (try), then its record (record).
func (h *Handler) send(ctx context.Context, r *run) attempt {
	p := r.p
	req := &trutoclient.UpdateOrganizationRequest{
		ID: p.ID, IntegratedAccountID: p.IntegratedAccountID, Body: p.Body,
		Options: p.Options, IdempotencyKey: p.UpstreamKey(),
	}
	var a attempt
	backoff := jittered(h.policy.InCallBase, uint64(max(h.policy.InCallRetries, 0)))
	_ = retry.Do(ctx, backoff, func(ctx context.Context) error {
		rec := h.try(ctx, r, req, &a)
		if a.decision.Class == trutoclient.ClassSuccess {
			a.applied = &rec // recorded with the result, in the same transaction (complete)
			return nil
		}
		// No HTTP answer at all: a connection-level blip, worth another try now.
		retryable := a.failed() && a.res == nil && ctx.Err() == nil
		h.record(ctx, r, &a, rec, retryable)
		if retryable && a.storeErr == nil {
			return retry.RetryableError(errors.New(a.decision.Reason))
		}
		return nil
	})
	return a
}

// try sends one request and classifies the answer; a 429 holds the account at
// once, and every answer is reported to the shared circuit breaker. It
// returns the try's record.
func (h *Handler) try(ctx context.Context, r *run, req *trutoclient.UpdateOrganizationRequest, a *attempt) Attempt {
	at := h.now().UTC()
	if a.first.IsZero() {
		a.first = at
	}
	_, res, err := h.sender.UpdateOrganization(ctx, req)
	a.sent++
	a.res, a.decision = res, trutoclient.Classify(res, err)
	a.decision.Reason = truncate(a.decision.Reason, MaxReasonBytes)
	account := r.p.IntegratedAccountID
	if a.decision.Class == trutoclient.ClassRateLimited {
		// Hold first: every moment before the hold is set, admission keeps
		// admitting into the exhausted window.
		a.scope = h.rateLimited(ctx, account, res, a.decision)
	}
	if h.breaker != nil && ctx.Err() == nil {
		// Health is shared knowledge; a failure to record it changes nothing here.
		_ = h.breaker.Record(context.WithoutCancel(ctx), account, a.failed(), r.probe && a.sent == 1)
	}
	rec := Attempt{At: at, Sent: true, StatusCode: a.decision.StatusCode, Class: a.decision.Class.String(), Reason: a.decision.Reason}
	if res != nil {
		rec.LatencyMS = res.Latency.Milliseconds()
		rec.RateLimit = res.Header.Get("Ratelimit-Remaining")
		rec.RetryAfter = res.Header.Get("Retry-After")
	}
	var apiErr *trutoclient.APIError
	if errors.As(err, &apiErr) {
		rec.Message = truncate(apiErr.Message, maxMessageBytes)
	}
	return rec
}

// record appends a failed try to the attempt history and spends budget: the
// run as a whole spends at most one unit (its last try, unless another try
// follows now), and none when the run's context ended (a stopping worker is
// not the update's fault) or the run was the open circuit's probe (the
// breaker's question, not the update's failure).
func (h *Handler) record(ctx context.Context, r *run, a *attempt, rec Attempt, retryable bool) {
	spend := a.failed() && !r.probe && ctx.Err() == nil && (!retryable || a.sent > h.policy.InCallRetries)
	spent, err := h.store.ledger.recordAttempt(context.WithoutCancel(ctx), r.id, rec, spend, a.decision.Reason)
	if err != nil {
		a.storeErr = err
		return
	}
	a.spent = spent
}

// complete stores the result of an applied update, lets its organization's
// next update go, and tells admission what the answer said of the account's
// limit.
func (h *Handler) complete(ctx context.Context, r *run, a attempt) error {
	res, p := a.res, r.p
	first := r.rec.FirstAttemptAt
	if first.IsZero() {
		first = a.first
	}
	result := Result{TaskID: r.id, IdempotencyKey: p.IdempotencyKey, StatusCode: res.StatusCode,
		Attempts: r.rec.Attempts + a.sent, FirstAttemptAt: first, CompletedAt: h.now().UTC(),
		Replayed: res.Header.Get("Idempotent-Replayed") == "true", Truncated: res.Truncated}
	result.Queue, _ = asynq.GetQueueName(ctx)
	for k := range res.Header {
		if keptHeader(k) {
			if result.Header == nil {
				result.Header = map[string]string{}
			}
			result.Header[k] = res.Header.Get(k)
		}
	}
	if !res.Truncated && json.Valid(res.Body) {
		result.Body = res.Body
	} else {
		result.BodyText = rawExcerpt(res.Body, MaxResultBody)
	}
	// The applied attempt joins the history when there is one; written again
	// (end, after a failover) it is not appended twice.
	history := r.rec.Attempts+a.sent > 1
	end := ledgerEnd{state: StatusCompleted, accepted: true, write: func(ctx context.Context) ([]string, error) {
		runs, err := h.store.ledger.complete(ctx, r.id, &p.Update, result, a.applied, history)
		history = false
		return runs, err
	}}
	var runs []string
	if err := h.durably(ctx, func(ctx context.Context) (err error) {
		runs, err = end.write(ctx)
		runs = withRun(runs, p.Run)
		return err
	}); err != nil {
		// The update is applied but the ledger could not say so: the next run
		// re-sends under the same key, and Truto's idempotency cache answers it.
		h.logger.Error("update applied but its result could not be stored; it will be re-sent with the same idempotency key",
			"task_id", r.id, "error", err.Error())
		return err
	}
	account := p.IntegratedAccountID
	err := h.end(ctx, r, OutcomeEvent{Type: EventCompleted, StatusCode: res.StatusCode, Attempts: result.Attempts}, runs,
		func(pipe redis.Pipeliner) {
			h.store.lines.noteAppliedIn(ctx, pipe, p.Update, p.origin())
			if lim, ok := statedLimit(res.RateLimit.Limit); ok {
				h.store.adm.LearnLimitIn(ctx, pipe, account, lim)
			}
		}, end)
	if err != nil {
		return err // run again: the ledger knows it applied, and the next run ends it
	}
	if a.decision.Delay > 0 {
		// The answer said the window is used up: hold the account for everyone.
		_ = h.store.accounts.Pause(ctx, account, h.now().Add(a.decision.Delay), res.StatusCode, "ratelimit-remaining is 0")
	}
	r.ev.Outcome = OutcomeCompleted
	h.observe(r.ev)
	return nil
}

// statedLimit reads Truto's ratelimit-limit header ("110;w=10": 110 requests
// per 10 seconds; a bare number has no window and says nothing usable).
func statedLimit(v string) (ratelimit.Limit, bool) {
	n, params, ok := strings.Cut(strings.TrimSpace(v), ";")
	reqs, err := strconv.Atoi(strings.TrimSpace(n))
	if !ok || err != nil || reqs <= 0 {
		return ratelimit.Limit{}, false
	}
	for _, kv := range strings.Split(params, ";") {
		k, val, _ := strings.Cut(strings.TrimSpace(kv), "=")
		if k != "w" {
			continue
		}
		secs, err := strconv.Atoi(val)
		if err != nil || secs <= 0 || secs > 86400 {
			return ratelimit.Limit{}, false
		}
		return ratelimit.Limit{Requests: reqs, Window: time.Duration(secs) * time.Second}, true
	}
	return ratelimit.Limit{}, false
}

// keptHeader says whether a response header is kept with the result: those
// that say something about this update (its rate-limit state, the request's
// id, an idempotent replay), not Date, Content-Type and the like, which
// would be stored once per update for a week.
func keptHeader(name string) bool {
	n := strings.ToLower(name)
	return strings.HasPrefix(n, "ratelimit") || strings.HasPrefix(n, "x-ratelimit") || n == "retry-after" ||
		strings.Contains(n, "request-id") || strings.HasPrefix(n, "idempotent")
}

// withRun adds the run named in the payload to the runs the ledger record
// names: the record may have expired while the update waited.
func withRun(runs []string, run string) []string {
	if run == "" || slices.Contains(runs, run) {
		return runs
	}
	return append(runs, run)
}

// end follows an update's end in the ledger (completed or dead): its
// outcome event, its state in its runs and extra in one round trip, then it
// takes the update out of admission (its organization's next update becomes
// ready), then it writes the run_done events of the runs it finished. A
// failure before the update leaves admission is returned: asynq runs it
// again, the ledger knows the end, and the next run ends it again (events
// are written at least once).
//
// end.state is the state the ledger holds for the update, read back in the
// same round trip as the event; end.write writes it again (nil: it cannot).
// A failover can lose the end the old master acknowledged just before it
// died (replication is asynchronous), and go-redis may even retry a command
// onto the new master without an error. Taken out of admission there without
// it, the update would be neither waiting nor ended: never run again, and its
// runs never done. So when the read does not show the end, or any write of
// the chain failed, the end is written again first, and the chain repeats.
func (h *Handler) end(ctx context.Context, r *run, e OutcomeEvent, runs []string, extra func(redis.Pipeliner), end ledgerEnd) error {
	ctx = context.WithoutCancel(ctx)
	p := r.p
	e.At, e.TaskID, e.IdempotencyKey = h.now().UTC(), r.id, p.IdempotencyKey
	e.Account, e.Organization, e.EnqueuedAt = p.IntegratedAccountID, p.ID, p.EnqueuedAt
	var finished func() []string
	attempt := 0
	err := h.durably(ctx, func(ctx context.Context) error {
		if attempt++; attempt > 1 && end.write != nil {
			again, err := end.write(ctx)
			if err != nil {
				return err
			}
			runs = withRun(again, p.Run)
		}
		var state *redis.StringCmd
		if err := h.store.pipelined(ctx, func(pipe redis.Pipeliner) {
			finished = h.store.events.endIn(ctx, pipe, e, runs)
			if extra != nil {
				extra(pipe)
			}
			if end.write != nil {
				state = pipe.HGet(ctx, h.store.ledger.recKey(r.id), "state")
			}
		}); err != nil {
			return err
		}
		if state != nil && state.Val() != string(end.state) {
			return errLedgerBehind
		}
		finish := h.store.adm.Finish
		if end.accepted {
			finish = h.store.adm.FinishAccepted
		}
		if _, err := finish(ctx, p.IntegratedAccountID, r.id, r.gen); err != nil {
			return fmt.Errorf("%w: %w", errFinishing, err)
		}
		return nil
	})
	switch {
	case errors.Is(err, errFinishing):
		// Its lease runs out, it is run again, and the ledger finishes it then.
		h.logger.Warn("could not take a finished update out of admission", "task_id", r.id, "error", err.Error())
	case err != nil:
		h.logger.Warn("could not write the update's outcome event or count it in its runs; it is run again to retry",
			"task_id", r.id, "error", err.Error())
		return err
	}
	for _, name := range finished() {
		if err := h.store.runs.announceRun(ctx, name); err != nil {
			h.logger.Warn("a run is done but its run_done event could not be written; the next read of its status writes it",
				"run", name, "error", err.Error())
		}
	}
	return nil
}

// ledgerEnd is the end an update's ledger record holds before the update
// leaves admission, and how to write it again.
type ledgerEnd struct {
	state State
	write func(context.Context) ([]string, error) // returns the runs the update is in
	// accepted: the update's request was accepted, and admission learns so
	// as it lets the update go (the account's learned rate grows back, a
	// lane held for its failures goes again).
	accepted bool
}

var (
	errLedgerBehind = errors.New("the ledger does not hold the update's end on this Redis (a failover?); writing it again")
	errFinishing    = errors.New("take the update out of admission")
)

// durably runs a ledger write that must not be lost to a passing Redis blip,
// retrying it a few times in this run before giving up.
func (h *Handler) durably(ctx context.Context, write func(context.Context) error) error {
	ctx = context.WithoutCancel(ctx)
	return retry.Do(ctx, jittered(50*time.Millisecond, 5), func(ctx context.Context) error {
		if err := write(ctx); err != nil {
			return retry.RetryableError(err)
		}
		return nil
	})
}

// jittered is an exponential backoff from base with 20 % jitter, for at most
// retries retries. It is built at the first retry: go-retry seeds a new
// random source for every jitter it makes (about 10 µs of CPU), and the
// handler's calls almost never retry; built up front, three per update were
// a tenth of the worker's CPU.
func jittered(base time.Duration, retries uint64) retry.Backoff {
	var b retry.Backoff
	return retry.BackoffFunc(func() (time.Duration, bool) {
		if b == nil {
			b = retry.WithMaxRetries(retries, retry.WithJitterPercent(20, retry.NewExponential(base)))
		}
		return b.Next()
	})
}

// deadLetter writes the update's dead letter, marks the ledger, and lets its
// organization's next update go.
func (h *Handler) deadLetter(ctx context.Context, r *run, class Class, status int, reason string, res *trutoclient.Response) error {
	ctx = context.WithoutCancel(ctx) // a dead letter is written even while stopping
	queue, _ := asynq.GetQueueName(ctx)
	qid, _ := asynq.GetTaskID(ctx)
	p := r.p
	d := DeadLetter{TaskID: r.id, Queue: queue, QueueTaskID: qid, Update: p.Update, IdempotencyKey: p.IdempotencyKey,
		EnqueuedAt: p.EnqueuedAt, Run: p.Run, Replays: p.Replays, MaxRetry: h.maxRetry(p), OrderSeq: p.OrderSeq, OriginSeq: p.origin(),
		Class: class, StatusCode: status, Reason: reason, DeadAt: h.now().UTC()}
	if res != nil {
		d.ErrorBody = rawExcerpt(res.Body, MaxDeadLetterErrorBody)
	}
	if rec, err := h.store.ledger.Get(ctx, r.id); err == nil {
		d.Attempts, d.FirstAttemptAt, d.LastAttemptAt = rec.Attempts, rec.FirstAttemptAt, rec.LastAttemptAt
	}
	// The dead letter and the ledger's dead mark in one transaction (they
	// share the update's hash slot): once they exist a later run sends nothing.
	end := ledgerEnd{state: StatusDead, write: func(ctx context.Context) ([]string, error) { return h.store.dead.deadLettered(ctx, d) }}
	var runs []string
	if err := h.durably(ctx, func(ctx context.Context) (err error) {
		runs, err = end.write(ctx)
		runs = withRun(runs, p.Run)
		return err
	}); err != nil {
		return err // not SkipRetry: asynq retries, and the dead letter is written next time
	}
	// Out of admission: a dead update must not hold back its organization's later updates.
	e := OutcomeEvent{Type: EventDead, StatusCode: d.StatusCode, Class: d.Class, Reason: d.Reason, Attempts: d.Attempts}
	if err := h.end(ctx, r, e, runs, nil, end); err != nil {
		return err // run again: the dead letter stops any send, and the next run ends it
	}
	h.logger.Info("update dead-lettered", "task_id", d.TaskID, "account", d.Update.IntegratedAccountID,
		"class", d.Class, "status", d.StatusCode, "reason", d.Reason)
	r.ev.Outcome = OutcomeDead
	if r.ev.Class == "" || r.ev.Class == ClassOf(trutoclient.ClassSuccess) {
		r.ev.Class = class
	}
	if r.ev.Reason == "" {
		r.ev.Reason = reason
	}
	h.observe(r.ev)
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
