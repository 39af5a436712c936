package tasks

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/orgsync/orgsync/internal/admission"
)

// Updates wait for admission (internal/admission) in Redis, not in asynq: an
// update enters asynq's pending list only when it can be sent now. The
// worker's admitter hands each admitted update to asynq as a task carrying
// the update's payload and two headers: its admission generation (a ticket of
// an older generation is stale and is dropped), and whether it is the open
// circuit's probe.

// Task headers set on admitted updates.
const (
	HeaderGeneration = "orgsync-generation"
	HeaderProbe      = "orgsync-probe"
)

// RunTaskID is the asynq task id of one admission of an update: the update's
// id and its generation, so a re-admission never meets a task asynq keeps.
func RunTaskID(id string, gen int64) string { return id + "." + strconv.FormatInt(gen, 10) }

// TicketTask builds the asynq task of an admitted update.
func TicketTask(t admission.Ticket) *asynq.Task {
	h := map[string]string{HeaderGeneration: strconv.FormatInt(t.Gen, 10)}
	if t.Probe {
		h[HeaderProbe] = "1"
	}
	return asynq.NewTaskWithHeaders(TypeUpdateOrganization, t.Payload, h)
}

// ticketOf reads an admitted task's generation and probe mark; ok is false
// for a task that did not come through admission (enqueued straight into
// asynq by an older producer).
func ticketOf(t *asynq.Task) (gen int64, probe, ok bool) {
	g, err := strconv.ParseInt(t.Headers()[HeaderGeneration], 10, 64)
	if err != nil || g <= 0 {
		return 0, false, false
	}
	return g, t.Headers()[HeaderProbe] == "1", true
}

// orgKey is an organization's key in admission: unique per account and id,
// fixed length, free of the characters Redis keys and hash tags care about.
func orgKey(u Update) string { return orderTag(u.IntegratedAccountID, u.ID) }

// Deliverer returns what the worker's admitter hands admitted updates to: it
// enqueues each into asynq's pending list under its run's task id. asynq
// keeps a completed task for retention (0: none; the worker keeps none, since
// the ledger holds the update and its result).
func Deliverer(client *asynq.Client, retention time.Duration) admission.Deliver {
	return func(ctx context.Context, ts []admission.Ticket) (int, error) {
		for i, t := range ts {
			_, err := client.EnqueueContext(ctx, TicketTask(t),
				asynq.TaskID(RunTaskID(t.ID, t.Gen)), asynq.Queue(t.Queue), asynq.MaxRetry(asynqMaxRetry),
				asynq.Timeout(DefaultTaskTimeout), asynq.Retention(retention))
			if err != nil {
				// Generations are unique across an update's lives, so even a
				// conflict means this ticket is not on the queue.
				return i, fmt.Errorf("hand %s to queue %s: %w", t.ID, t.Queue, err)
			}
		}
		return len(ts), nil
	}
}
