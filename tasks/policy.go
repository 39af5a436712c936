package tasks

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"

	"github.com/orgsync/orgsync/trutoclient"
)

// Policy defaults (DESIGN.md, "Failure policy").
const (
	DefaultMaxRetry      = 10
	DefaultRetryBase     = time.Second
	DefaultRetryCap      = 10 * time.Minute
	DefaultRetryJitter   = 0.2
	DefaultMaxAge        = 72 * time.Hour
	DefaultParkedRecheck = 30 * time.Second
	DefaultInCallRetries = 2
	DefaultInCallBase    = 100 * time.Millisecond
	// DefaultCrashRetryDelay is how soon an update whose worker died is tried again.
	DefaultCrashRetryDelay = time.Second
)

// Policy is the retry and waiting policy of the handler. Zero fields take the defaults.
type Policy struct {
	MaxRetry      int           // retries that spend budget before an update is dead-lettered
	RetryBase     time.Duration // first backoff
	RetryCap      time.Duration // largest backoff
	RetryJitter   float64       // ± fraction applied to each backoff; negative for none
	MaxAge        time.Duration // wall-clock budget since enqueue; past it the update is dead-lettered as expired
	ParkedRecheck time.Duration // how often a parked account's updates look again
	InCallRetries int           // quick retries inside one run for connection-level failures (-1: none)
	InCallBase    time.Duration // first of those quick retries' backoff
	OrphanGrace   time.Duration // how long a line's head may lack an asynq task before it is cleared
}

func (p Policy) withDefaults() Policy {
	if p.MaxRetry == 0 {
		p.MaxRetry = DefaultMaxRetry
	}
	if p.MaxRetry < 0 {
		p.MaxRetry = 0
	}
	if p.RetryBase <= 0 {
		p.RetryBase = DefaultRetryBase
	}
	if p.RetryCap <= 0 {
		p.RetryCap = DefaultRetryCap
	}
	if p.RetryJitter == 0 {
		p.RetryJitter = DefaultRetryJitter
	}
	if p.MaxAge <= 0 {
		p.MaxAge = DefaultMaxAge
	}
	if p.ParkedRecheck <= 0 {
		p.ParkedRecheck = DefaultParkedRecheck
	}
	if p.InCallRetries == 0 {
		p.InCallRetries = DefaultInCallRetries
	}
	if p.InCallBase <= 0 {
		p.InCallBase = DefaultInCallBase
	}
	if p.OrphanGrace <= 0 {
		p.OrphanGrace = DefaultOrphanGrace
	}
	return p
}

// Backoff is the delay before retry number n (1-based): RetryBase doubling
// up to RetryCap, with ±RetryJitter.
func (p Policy) Backoff(n int) time.Duration {
	p = p.withDefaults()
	d := p.RetryBase
	for i := 1; i < n && d < p.RetryCap; i++ {
		d *= 2
	}
	d = min(d, p.RetryCap)
	if p.RetryJitter > 0 {
		f := 1 + p.RetryJitter*(2*rand.Float64()-1)
		d = time.Duration(float64(d) * f)
	}
	return d
}

// WaitError means the update must wait without spending budget: its account is
// rate limited or parked, or the worker is stopping. asynq re-queues it after Delay.
type WaitError struct {
	Delay  time.Duration
	Reason string
}

func (e *WaitError) Error() string {
	return "waiting " + e.Delay.Round(time.Millisecond).String() + ": " + e.Reason
}

// RetryError means an attempt failed transiently and spent budget; Spent
// says how much of it has been spent so far.
type RetryError struct {
	Spent    int
	Decision trutoclient.Decision
}

func (e *RetryError) Error() string { return "retry after failure: " + e.Decision.Reason }

// RetryDelay is the asynq RetryDelayFunc for orgsync's task: a wait takes the
// delay it carries, a failure backs off by how much budget it has spent, and a
// task whose worker died comes back quickly.
func (p Policy) RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var we *WaitError
	var re *RetryError
	switch {
	case errors.As(err, &we):
		// asynq stores retry times in whole seconds, rounded down: without the
		// extra second a wait could end up to a second early and find the
		// account still held (or send into a still-closed window).
		return max(we.Delay, 0) + time.Second
	case errors.As(err, &re):
		return p.Backoff(re.Spent)
	case errors.Is(err, asynq.ErrLeaseExpired):
		return DefaultCrashRetryDelay
	}
	return p.Backoff(n + 1)
}

// IsFailure is the asynq IsFailure func: waiting, and a crashed worker's lease
// running out, are not failures of the update and do not count against it.
func IsFailure(err error) bool {
	var we *WaitError
	return !errors.As(err, &we) && !errors.Is(err, asynq.ErrLeaseExpired)
}
