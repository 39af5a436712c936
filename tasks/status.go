package tasks

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/orgsync/orgsync/internal/admission"
)

// Operator is what an operator does across the store's parts
// (Store.Operator), as asynq's Inspector is to its queues: look an update up
// (Status, Find), gather the overview (Stats), replay a dead letter or purge
// it. The CLI and the admin API both use it; asynq's inspector it reads
// through is the store's, built once.
type Operator struct{ *base }

// Status is everything known about one update.
type Status struct {
	TaskID         string      `json:"task_id"`
	IdempotencyKey string      `json:"idempotency_key,omitempty"`
	Queue          string      `json:"queue,omitempty"`
	State          State       `json:"state"`
	Why            string      `json:"why,omitempty"`
	Update         *Update     `json:"update,omitempty"`
	NextAttemptAt  time.Time   `json:"next_attempt_at,omitzero"`
	Attempts       int         `json:"attempts"`
	Spent          int         `json:"retry_budget_spent"`
	LastError      string      `json:"last_error,omitempty"`
	Result         *Result     `json:"result,omitempty"`
	DeadLetter     *DeadLetter `json:"dead_letter,omitempty"`
	History        []Attempt   `json:"history,omitempty"`
}

// Lookup says which update Find is about.
type Lookup struct {
	// Ref is a task id or an idempotency key.
	Ref string
	// Account is the integrated account of the update; with a key it picks
	// that account's update, since each account has its own keys.
	Account string
	// AsKey and AsTaskID say what Ref is; with neither, both are tried.
	AsKey, AsTaskID bool
}

// Match is one update a lookup found, and how.
type Match struct {
	TaskID    string `json:"task_id"`
	Account   string `json:"account,omitempty"`
	MatchedAs string `json:"matched_as"` // "task_id" or "idempotency_key"
}

// ErrAmbiguous is matched by the error of a lookup that found several updates.
var ErrAmbiguous = errors.New("ambiguous reference")

// AmbiguousError is a lookup that found several updates: a key several
// accounts used, or a reference that is one update's task id and another's key.
type AmbiguousError struct {
	Ref     string
	Matches []Match
}

func (e *AmbiguousError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%q matches %d updates:", e.Ref, len(e.Matches))
	for i, m := range e.Matches {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s (as %s", m.TaskID, strings.ReplaceAll(m.MatchedAs, "_", " "))
		if m.Account != "" {
			fmt.Fprintf(&b, ", account %q", m.Account)
		}
		b.WriteByte(')')
	}
	return b.String()
}

// Is makes errors.Is(err, ErrAmbiguous) true.
func (e *AmbiguousError) Is(target error) bool { return target == ErrAmbiguous }

// Status looks an update up by task id or idempotency key (both are tried;
// see Find) across asynq's queues, the ledger and the dead letters. It
// returns ErrNotFound when nothing knows it, and an *AmbiguousError when
// several updates match.
func (s *Operator) Status(ctx context.Context, ref string, queues []string) (Status, error) {
	return s.Find(ctx, Lookup{Ref: ref}, queues)
}

// Find looks up the update l names. A reference of task id form is tried as a
// task id; any reference is tried as a key: of l.Account when given, else of
// every account that used it recently, and as an update enqueued before keys
// belonged to accounts. Exactly one match is its status; none is ErrNotFound;
// several are an *AmbiguousError listing them, to pick with l.Account,
// l.AsKey or l.AsTaskID.
func (s *Operator) Find(ctx context.Context, l Lookup, queues []string) (Status, error) {
	type candidate struct {
		id, as  string
		account string // the account the id was derived from; "" for a task id or legacy id
	}
	var cands []candidate
	if !l.AsKey && isTaskIDForm(l.Ref) {
		cands = append(cands, candidate{l.Ref, "task_id", ""})
	}
	if !l.AsTaskID && ValidateKey(l.Ref) == nil {
		accounts := []string{l.Account}
		if l.Account == "" {
			var err error
			if accounts, err = s.ledger.keyAccounts(ctx, l.Ref); err != nil {
				return Status{}, err
			}
		}
		for _, a := range accounts {
			cands = append(cands, candidate{TaskID(a, l.Ref), "idempotency_key", a})
		}
		cands = append(cands, candidate{LegacyTaskID(l.Ref), "idempotency_key", ""})
	}
	var found []Status
	var matches []Match
	seen := map[string]bool{}
	for _, c := range cands {
		if seen[c.id] {
			continue
		}
		seen[c.id] = true
		st, err := s.statusByID(ctx, c.id, queues)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return st, err
		}
		account := c.account
		if st.Update != nil {
			account = st.Update.IntegratedAccountID
		}
		if l.Account != "" && account != l.Account {
			continue // a task id or legacy task of another account (or of one unknown)
		}
		if c.as == "idempotency_key" && st.IdempotencyKey != "" && st.IdempotencyKey != l.Ref {
			continue
		}
		found = append(found, st)
		matches = append(matches, Match{TaskID: c.id, Account: account, MatchedAs: c.as})
	}
	switch len(found) {
	case 0:
		return Status{}, fmt.Errorf("update %s: %w", l.Ref, ErrNotFound)
	case 1:
		return found[0], nil
	}
	return Status{}, &AmbiguousError{Ref: l.Ref, Matches: matches}
}

// statusByID is the status of the update with task id taskID, or ErrNotFound.
func (s *Operator) statusByID(ctx context.Context, taskID string, queues []string) (Status, error) {
	st := Status{TaskID: taskID}
	rec, err := s.ledger.Get(ctx, taskID)
	if err != nil {
		return st, err
	}
	st.Attempts, st.Spent, st.LastError, st.Result = rec.Attempts, rec.Spent, rec.LastError, rec.Result
	if st.History, err = s.ledger.Attempts(ctx, taskID); err != nil {
		return st, err
	}
	if d, err := s.dead.Get(ctx, taskID); err == nil {
		st.State, st.DeadLetter, st.Queue = StatusDead, &d, d.Queue
		st.IdempotencyKey, st.Why = d.IdempotencyKey, d.Reason
		u := d.Update
		st.Update = &u
		return st, nil
	} else if !errors.Is(err, ErrNotFound) {
		return st, err
	}
	if as, ok, err := s.adm.Update(ctx, taskID); err != nil {
		return st, err
	} else if ok {
		st.Queue = as.Queue
		if p, err := DecodePayload(as.Payload); err == nil {
			u := p.Update
			st.Update, st.IdempotencyKey = &u, p.IdempotencyKey
		}
		switch as.State {
		case "admitted":
			st.State = StatusPending
		case "running":
			st.State = StatusActive
		default:
			st.State = StatusWaiting
			st.Why, st.NextAttemptAt = s.whyWaiting(ctx, as, rec)
		}
		return st, nil
	}
	if len(queues) == 0 {
		queues = []string{DefaultQueue}
	}
	// Tasks queued straight into asynq before admission existed.
	ins := s.ins
	for _, q := range queues {
		info, err := ins.GetTaskInfo(q, taskID)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			continue
		}
		if err != nil {
			return st, fmt.Errorf("look up %s in queue %s: %w", taskID, q, err)
		}
		st.Queue, st.NextAttemptAt = q, info.NextProcessAt
		if p, err := DecodePayload(info.Payload); err == nil {
			u := p.Update
			st.Update, st.IdempotencyKey = &u, p.IdempotencyKey
		}
		switch info.State {
		case asynq.TaskStatePending:
			st.State = StatusPending
		case asynq.TaskStateScheduled:
			st.State = StatusScheduled
		case asynq.TaskStateActive:
			st.State = StatusActive
		case asynq.TaskStateRetry:
			st.State = StatusRetry
			if strings.HasPrefix(rec.LastError, "waiting: ") {
				st.State, st.Why = StatusWaiting, strings.TrimPrefix(rec.LastError, "waiting: ")
			} else {
				st.Why = rec.LastError
			}
		case asynq.TaskStateCompleted:
			st.State = StatusCompleted
		case asynq.TaskStateArchived:
			st.State, st.Why = StatusDead, info.LastErr
		default:
			st.State = State(info.State.String())
		}
		return st, nil
	}
	if rec.State == StatusCompleted {
		st.State = StatusCompleted
		if r := rec.Result; r != nil {
			st.IdempotencyKey, st.Queue = r.IdempotencyKey, r.Queue
			if rec.Update != nil {
				st.Update = rec.Update
			} else if r.QueueTaskID != "" {
				// Completed by a version that left the payload in asynq's
				// completed task, kept for the retention.
				if info, err := ins.GetTaskInfo(r.Queue, r.QueueTaskID); err == nil {
					if p, err := DecodePayload(info.Payload); err == nil {
						u := p.Update
						st.Queue, st.Update = r.Queue, &u
					}
				}
			}
		}
		return st, nil
	}
	if rec.Attempts == 0 && rec.State == "" {
		return st, fmt.Errorf("update %s: %w", taskID, ErrNotFound)
	}
	st.State = StatusUnknown
	return st, nil
}

// whyWaiting says what a waiting update waits for, and when it may go at the earliest.
func (s *Operator) whyWaiting(ctx context.Context, as admission.UpdateState, rec Record) (string, time.Time) {
	now := s.now()
	if as.Ahead > 0 {
		return fmt.Sprintf("behind %d earlier update(s) of its organization, which go first", as.Ahead), time.Time{}
	}
	if st, err := s.adm.Stats(ctx); err == nil && st.AllParked != "" {
		return "every account is parked (" + st.AllParked + "): fix the API token, then `enqueue accounts resume '*'`", time.Time{}
	}
	acct, err := s.adm.Account(ctx, as.Account)
	if err != nil {
		return "in its account's lane", time.Time{}
	}
	switch {
	case acct.Parked != "":
		return "account parked (" + acct.Parked + "): resume it with `enqueue accounts resume " + as.Account + "`", time.Time{}
	case acct.HeldUntil.After(now):
		return "account rate limited until " + acct.HeldUntil.Format(time.RFC3339), acct.HeldUntil
	case as.NotBefore.After(now) && rec.Spent > 0:
		return "backing off after a failure (" + strings.TrimPrefix(rec.LastError, "waiting: ") + ")", as.NotBefore
	case as.NotBefore.After(now):
		return "scheduled", as.NotBefore
	}
	why := fmt.Sprintf("its account's turn: %d update(s) of the account in admission", acct.Waiting)
	if acct.LearnedRate > 0 {
		why += fmt.Sprintf(", sent at a learned %.2f/s", acct.LearnedRate)
	}
	if strings.HasPrefix(rec.LastError, "waiting: ") {
		why += "; last put back: " + strings.TrimPrefix(rec.LastError, "waiting: ")
	}
	return why, acct.NextAdmission
}

// Stats is the overview `enqueue stats` prints.
type Stats struct {
	Queues           []QueueStats   `json:"queues"`
	DeadLetters      int64          `json:"dead_letters"`
	DeadByStatus     map[string]int `json:"dead_by_status"`
	DeadByClass      map[string]int `json:"dead_by_class"`
	Holds            []Hold         `json:"account_holds"`
	OldestDeadLetter time.Time      `json:"oldest_dead_letter,omitzero"`
	// Admission is where the updates not yet in asynq stand.
	Admission admission.Stats `json:"admission"`
}

// QueueStats counts one asynq queue's tasks by state.
type QueueStats struct {
	Queue     string `json:"queue"`
	Paused    bool   `json:"paused"`
	Pending   int    `json:"pending"`
	Active    int    `json:"active"`
	Scheduled int    `json:"scheduled"`
	Retry     int    `json:"retry"`
	Archived  int    `json:"archived"`
	Completed int    `json:"completed"`
	// LatencyMS is how long the oldest pending task has waited.
	LatencyMS int64 `json:"oldest_pending_ms"`
}

// Stats gathers per-queue counts, dead letters by status and class, and account holds.
func (s *Operator) Stats(ctx context.Context) (Stats, error) {
	out := Stats{DeadByStatus: map[string]int{}, DeadByClass: map[string]int{}}
	ins := s.ins
	queues, err := ins.Queues()
	if err != nil {
		return out, fmt.Errorf("list queues: %w", err)
	}
	for _, q := range queues {
		qi, err := ins.GetQueueInfo(q)
		if err != nil {
			return out, fmt.Errorf("queue %s: %w", q, err)
		}
		out.Queues = append(out.Queues, QueueStats{Queue: q, Paused: qi.Paused, Pending: qi.Pending, Active: qi.Active,
			Scheduled: qi.Scheduled, Retry: qi.Retry, Archived: qi.Archived, Completed: qi.Completed, LatencyMS: qi.Latency.Milliseconds()})
	}
	err = s.dead.Each(ctx, Filter{}, func(d DeadLetter) error {
		out.DeadLetters++
		out.DeadByStatus[fmt.Sprint(d.StatusCode)]++
		out.DeadByClass[string(d.Class)]++
		if out.OldestDeadLetter.IsZero() {
			out.OldestDeadLetter = d.DeadAt
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	if out.Holds, err = s.accounts.Holds(ctx); err != nil {
		return out, err
	}
	if out.Admission, err = s.adm.Stats(ctx); err != nil {
		return out, err
	}
	return out, nil
}
