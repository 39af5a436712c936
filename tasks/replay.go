package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/orgsync/orgsync/internal/admission"
)

// ReplayOutcome says what happened to one dead letter in a replay.
type ReplayOutcome struct {
	TaskID         string       `json:"task_id"`
	IdempotencyKey string       `json:"idempotency_key,omitempty"`
	Account        string       `json:"account,omitempty"`
	Status         ReplayStatus `json:"status"`
	Reason         string       `json:"reason,omitempty"`
}

// ReplayOptions adjusts a replay.
type ReplayOptions struct {
	DryRun   bool   // report what would go, change nothing
	MaxRetry int    // the fresh budget; 0 keeps the update's own (or the worker default)
	Queue    string // default: the dead letter's own queue, else DefaultQueue
	// Force replays an update even though a newer update has been applied to
	// the same organization since it died (its body would overwrite newer data).
	Force bool
}

// Replay re-enqueues one dead letter with a fresh retry budget, a fresh
// wall-clock budget and the same idempotency key, then removes the dead letter.
// Each step can be repeated: a crash half-way leaves either the dead letter
// (replay it again) or the re-enqueued task (the dead letter is then removed).
func (s *Operator) Replay(ctx context.Context, d DeadLetter, o ReplayOptions) (ReplayOutcome, error) {
	out := ReplayOutcome{TaskID: d.TaskID, IdempotencyKey: d.IdempotencyKey, Account: d.Update.IntegratedAccountID}
	if d.Class == ClassMalformed || d.IdempotencyKey == "" {
		out.Status, out.Reason = ReplaySkipped, "malformed payload: nothing to replay; see raw_payload, fix it and enqueue it again"
		return out, nil
	}
	origin := d.OriginSeq
	if origin == 0 {
		origin = d.OrderSeq
	}
	if !o.Force && origin > 0 {
		newer, err := s.lines.newerThan(ctx, d.Update, d.TaskID, origin)
		if err != nil {
			return out, err
		}
		if newer != "" {
			out.Status = ReplaySkipped
			out.Reason = fmt.Sprintf("stale: a later update of organization %s %s; "+
				"replaying this one would overwrite newer data (use --force to replay anyway)", d.Update.ID, newer)
			return out, nil
		}
	}
	// An earlier replay may have re-enqueued it already and failed only to
	// remove the dead letter: then finish that, and do not run it again.
	ins := s.ins
	if again, why, err := s.alreadyBack(ctx, ins, d); err != nil {
		return out, err
	} else if again {
		if o.DryRun {
			out.Status, out.Reason = ReplaySkipped, why
			return out, nil
		}
		if _, err := s.dead.Delete(ctx, d.TaskID); err != nil {
			return out, err
		}
		out.Status, out.Reason = ReplaySkipped, why+"; its dead letter is removed"
		return out, nil
	}
	if o.DryRun {
		out.Status = WouldReplay
		return out, nil
	}
	queue := o.Queue
	if queue == "" {
		queue = d.Queue
	}
	if queue == "" {
		queue = DefaultQueue
	}
	// asynq's archive mirrors the dead letter for the queue UI: the replay ends that.
	if err := s.deleteArchived(ins, d); err != nil {
		return out, fmt.Errorf("replay %s: %w", d.TaskID, err)
	}
	if err := s.ledger.resetForReplay(ctx, d.TaskID); err != nil {
		return out, err
	}
	// Waiting again in its runs, before a worker can end it once more.
	if rec, err := s.ledger.Get(ctx, d.TaskID); err != nil {
		return out, err
	} else if err := s.runs.setInRuns(ctx, d.TaskID, rec.Runs, runWaiting); err != nil {
		return out, fmt.Errorf("replay %s: %w", d.TaskID, err)
	}
	maxRetry := d.MaxRetry
	if o.MaxRetry > 0 {
		maxRetry = o.MaxRetry
	}
	u := d.Update
	u.IdempotencyKey = d.IdempotencyKey
	pl := Payload{Version: d.payloadVersion(), Update: u, EnqueuedAt: s.now().UTC(), MaxRetry: maxRetry, Run: d.Run, Replays: d.Replays + 1, OriginSeq: origin}
	// Enqueue first, then remove the dead letter: a crash in between leaves
	// both, and the next replay finds the task and only removes the record.
	if err := s.ledger.noteKey(ctx, u.IntegratedAccountID, u.IdempotencyKey); err != nil {
		return out, fmt.Errorf("replay %s: %w", d.TaskID, err)
	}
	switch added, err := s.lines.add(ctx, pl, queue, time.Time{}); {
	case err != nil:
		return out, fmt.Errorf("replay %s: %w", d.TaskID, err)
	case !added:
		out.Reason = "was already re-enqueued"
	}
	if _, err := s.dead.Delete(context.WithoutCancel(ctx), d.TaskID); err != nil {
		return out, fmt.Errorf("replay %s: re-enqueued, but removing its dead letter failed (replay it again to finish): %w", d.TaskID, err)
	}
	out.Status = Replayed
	return out, nil
}

// alreadyBack reports whether the dead letter's update is back in admission
// (or, for a task queued before admission, live in asynq), or completed per
// the ledger: a replay that was interrupted after re-enqueueing it.
func (s *Operator) alreadyBack(ctx context.Context, ins *asynq.Inspector, d DeadLetter) (bool, string, error) {
	rec, err := s.ledger.Get(ctx, d.TaskID)
	if err != nil {
		return false, "", err
	}
	if rec.State == StatusCompleted {
		return true, "already applied by an earlier replay", nil
	}
	switch st, ok, err := s.adm.Update(ctx, d.TaskID); {
	case err != nil:
		return false, "", fmt.Errorf("replay %s: %w", d.TaskID, err)
	case ok && rec.State == StatusDead && st.State == "running":
		return false, "", fmt.Errorf("replay %s: the worker that dead-lettered it is still finishing; try again in a moment", d.TaskID)
	case ok && rec.State == StatusDead:
		// Dead, but admission still holds it (the dead run could not take it
		// out): take it out now, and replay.
		if _, err := s.adm.Finish(ctx, d.Update.IntegratedAccountID, d.TaskID, admission.AnyGeneration); err != nil {
			return false, "", fmt.Errorf("replay %s: %w", d.TaskID, err)
		}
		return false, "", nil
	case ok:
		return true, "already re-enqueued (" + st.State + ") by an earlier replay", nil
	}
	if d.Queue == "" {
		return false, "", nil
	}
	info, err := ins.GetTaskInfo(d.Queue, d.TaskID)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
		return false, "", nil
	case err != nil:
		return false, "", fmt.Errorf("replay %s: look it up in asynq: %w", d.TaskID, err)
	case info.State == asynq.TaskStateArchived:
		return false, "", nil
	case rec.State == StatusDead:
		// Live in asynq but dead in the ledger: the run that dead-lettered it
		// has not finished handing it to asynq's archive yet.
		return false, "", fmt.Errorf("replay %s: the worker that dead-lettered it is still finishing (%s); try again in a moment", d.TaskID, info.State)
	}
	return true, "already re-enqueued (" + info.State.String() + ") by an earlier replay", nil
}

// Purge forgets a dead letter for good: the record, asynq's archived copy
// (which would hold the task id), and the ledger's "dead" state, so that the
// same idempotency key can be enqueued again and will be sent. A live task
// under the same id (a replay in progress) is left alone. It reports whether
// the record existed.
func (s *Operator) Purge(ctx context.Context, d DeadLetter) (bool, error) {
	if err := s.deleteArchived(s.ins, d); err != nil {
		return false, fmt.Errorf("purge %s: %w", d.TaskID, err)
	}
	rec, err := s.ledger.Get(ctx, d.TaskID)
	if err != nil {
		return false, err
	}
	if err := s.ledger.resetForReplay(ctx, d.TaskID); err != nil {
		return false, err
	}
	existed, err := s.dead.Delete(ctx, d.TaskID)
	if err != nil {
		return existed, err
	}
	// Ended without applying: purged in its runs, which may now be done.
	if rec.State != StatusCompleted {
		if err := s.runs.setInRuns(ctx, d.TaskID, rec.Runs, runPurged); err != nil {
			return existed, fmt.Errorf("purge %s: %w", d.TaskID, err)
		}
	}
	return existed, nil
}

// deleteArchived deletes asynq's archived copy of a dead letter (kept for the
// queue UI), if it is there.
func (s *Operator) deleteArchived(ins *asynq.Inspector, d DeadLetter) error {
	if d.Queue == "" {
		return nil
	}
	id := d.QueueTaskID
	if id == "" {
		id = d.TaskID // dead before admission: the task id was the update's
	}
	info, err := ins.GetTaskInfo(d.Queue, id)
	if err != nil || info.State != asynq.TaskStateArchived {
		return nil
	}
	if err := ins.DeleteTask(d.Queue, id); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
		return fmt.Errorf("delete asynq's archived copy: %w", err)
	}
	return nil
}
