package tasks

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"
)

// Policy defaults: the failure policy in the README.
const (
	DefaultMaxRetry      = 10
	DefaultRetryBase     = time.Second
	DefaultRetryCap      = 10 * time.Minute
	DefaultRetryJitter   = 0.2
	DefaultMaxAge        = 72 * time.Hour
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
	InCallRetries int           // quick retries inside one run for connection-level failures (-1: none)
	InCallBase    time.Duration // first of those quick retries' backoff
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
	if p.InCallRetries == 0 {
		p.InCallRetries = DefaultInCallRetries
	}
	if p.InCallBase <= 0 {
		p.InCallBase = DefaultInCallBase
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

// RetryDelay is the asynq RetryDelayFunc for orgsync's task. Updates that
// wait or retry go back to admission, not to asynq's retry set; asynq retries
// a run only when it ended in trouble before an outcome was recorded (Redis
// unreachable), or when the run's worker died.
func (p Policy) RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if errors.Is(err, asynq.ErrLeaseExpired) {
		return DefaultCrashRetryDelay
	}
	return p.Backoff(n + 1)
}

// IsFailure is the asynq IsFailure func: a crashed worker's lease running
// out is not a failure of the update and does not count against it.
func IsFailure(err error) bool { return !errors.Is(err, asynq.ErrLeaseExpired) }
