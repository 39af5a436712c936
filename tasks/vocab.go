package tasks

import "github.com/orgsync/orgsync/trutoclient"

// The words orgsync's records, events, metrics and command output use, each
// a type of its own with its values fixed here: JSON fields and metric labels
// carry their string forms, and a word of one kind cannot be used for another.

// State is where an update stands: in `enqueue status`, in a run's results,
// and (completed or dead) in the ledger.
type State string

// States of an update.
const (
	StatusWaiting   State = "waiting"   // in admission: its turn, its account's slot, a hold, or a backoff
	StatusPending   State = "pending"   // admitted: in asynq's pending list for the next free worker
	StatusActive    State = "active"    // a worker is sending it
	StatusScheduled State = "scheduled" // queued before admission for a later time
	StatusRetry     State = "retry"     // queued before admission, in asynq's retry set
	StatusCompleted State = "completed" // applied; its result is stored
	StatusDead      State = "dead"      // dead-lettered
	// StatusPurged is a dead update whose dead letter an operator purged: it
	// ended without being applied, and is not waiting (runs only).
	StatusPurged State = "purged"
	// StatusNotQueued is a line whose update its run holds but admission does
	// not, and which has not ended: its enqueue stopped half-way (Redis failed,
	// the producer was stopped). Enqueueing the same line again (re-running
	// the file with the same run name) queues it (runs only).
	StatusNotQueued State = "not_queued"
	// StatusUnknown is an update the ledger has tried but no record places.
	StatusUnknown State = "unknown"
)

// Outcome is what one run of the handler came to (Event.Outcome, the
// `outcome` label of orgsync_updates_total).
type Outcome string

// Outcomes of one run.
const (
	// OutcomeCompleted: applied (or known applied); the result is stored.
	OutcomeCompleted Outcome = "completed"
	// OutcomeRetry: a transient failure; budget spent, back to admission after the backoff.
	OutcomeRetry Outcome = "retry"
	// OutcomeWaiting: back to admission without spending budget (a 429, a
	// parked account, a stopping worker).
	OutcomeWaiting Outcome = "waiting"
	// OutcomeDead: dead-lettered.
	OutcomeDead Outcome = "dead"
	// OutcomeStale: a ticket admission no longer honours (its update went
	// back after a lease ran out, or finished); nothing was done.
	OutcomeStale Outcome = "stale"
)

// Class is why a run came to its outcome (Event.Class, a dead letter's class,
// the `class` label of orgsync_updates_total and, for runs that put their
// update back, the `reason` label of orgsync_waits_total): the class of
// Truto's answer (ClassOf), or one of the classes and wait reasons below.
type Class string

// ClassOf is the class of a trutoclient answer.
func ClassOf(c trutoclient.Class) Class { return Class(c.String()) }

// Classes that are not a Truto answer.
const (
	ClassMalformed Class = "malformed" // the task payload could not be read
	ClassExpired   Class = "expired"   // older than the wall-clock budget
	ClassExhausted Class = "exhausted" // the retry budget is spent
	ClassSkipped   Class = "skipped"   // the ledger already knew the outcome: nothing sent
)

// Why a run put its update back unsent, besides a 429 (rate_limited) or a
// park (account_attention).
const (
	WaitHeld     Class = "held"     // its account was held after it was admitted
	WaitJoined   Class = "joined"   // queued straight into asynq before admission existed
	WaitLedger   Class = "ledger"   // Redis trouble reading or writing its ledger
	WaitStopping Class = "stopping" // the worker stopped mid-request
)

// EnqueueStatus is what an enqueue did (Enqueued.Status).
type EnqueueStatus string

// Enqueue statuses.
const (
	EnqueueAccepted  EnqueueStatus = "enqueued"
	EnqueueDuplicate EnqueueStatus = "duplicate" // the update exists already; nothing was enqueued
)

// ReplayStatus is what a replay did with one dead letter (ReplayOutcome.Status).
type ReplayStatus string

// Replay statuses.
const (
	Replayed      ReplayStatus = "replayed"
	WouldReplay   ReplayStatus = "would_replay" // a dry run
	ReplaySkipped ReplayStatus = "skipped"
)

// RunResultStates are the states a line of a run can be in
// (RunResult.State), in the order help texts list them.
var RunResultStates = []State{StatusCompleted, StatusDead, StatusPurged, StatusNotQueued,
	StatusWaiting, StatusPending, StatusActive}

// ParseRunResultState reads a state a run's results may be filtered by.
func ParseRunResultState(s string) (State, bool) {
	for _, st := range RunResultStates {
		if string(st) == s {
			return st, true
		}
	}
	return "", false
}

// Join lists states as "a, b, c".
func Join[T ~string](words []T) string {
	var b []byte
	for i, w := range words {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, w...)
	}
	return string(b)
}
