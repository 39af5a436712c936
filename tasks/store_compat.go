package tasks

import (
	"context"
	"time"
)

// Forwarders from the names the Store had before its split, kept until
// every caller has moved to the parts; removed in the commit after.

func (s *Store) AccountHold(ctx context.Context, account string) (Hold, bool, error) {
	return s.accounts.Hold(ctx, account)
}
func (s *Store) Attempts(ctx context.Context, taskID string) ([]Attempt, error) {
	return s.ledger.Attempts(ctx, taskID)
}
func (s *Store) CountDeadLetters(ctx context.Context) (int64, error) { return s.dead.Count(ctx) }
func (s *Store) CountEvents(ctx context.Context) (int64, error)      { return s.events.Count(ctx) }
func (s *Store) DeadLetter(ctx context.Context, taskID string) (DeadLetter, error) {
	return s.dead.Get(ctx, taskID)
}
func (s *Store) DeleteDeadLetter(ctx context.Context, taskID string) (bool, error) {
	return s.dead.Delete(ctx, taskID)
}
func (s *Store) EachDeadLetter(ctx context.Context, f Filter, fn func(DeadLetter) error) error {
	return s.dead.Each(ctx, f, fn)
}
func (s *Store) EachRunResult(ctx context.Context, name string, f ResultFilter, fn func(RunResult) error) error {
	return s.runs.EachResult(ctx, name, f, fn)
}
func (s *Store) EventsKey() string { return s.events.Key() }
func (s *Store) Find(ctx context.Context, l Lookup, queues []string) (Status, error) {
	return s.op.Find(ctx, l, queues)
}
func (s *Store) Get(ctx context.Context, taskID string) (Record, error) {
	return s.ledger.Get(ctx, taskID)
}
func (s *Store) Holds(ctx context.Context) ([]Hold, error) { return s.accounts.Holds(ctx) }
func (s *Store) LastApplied(ctx context.Context, account, id string) (int64, error) {
	return s.lines.LastApplied(ctx, account, id)
}
func (s *Store) LastEventID(ctx context.Context) (string, error) { return s.events.LastID(ctx) }
func (s *Store) MigrateLegacyDeadLetters(ctx context.Context) (int, error) {
	return s.dead.MigrateLegacy(ctx)
}
func (s *Store) MigrateLegacyHolds(ctx context.Context) (int, error) {
	return s.accounts.MigrateLegacyHolds(ctx)
}
func (s *Store) NewEventReader(o EventReaderOptions) (*EventReader, error) {
	return s.events.NewReader(o)
}
func (s *Store) ParkAccount(ctx context.Context, account string, status int, reason string) error {
	return s.accounts.Park(ctx, account, status, reason)
}
func (s *Store) PauseAccount(ctx context.Context, account string, until time.Time, status int, reason string) error {
	return s.accounts.Pause(ctx, account, until, status, reason)
}
func (s *Store) Purge(ctx context.Context, d DeadLetter) (bool, error) { return s.op.Purge(ctx, d) }
func (s *Store) PutDeadLetter(ctx context.Context, d DeadLetter) error { return s.dead.Put(ctx, d) }
func (s *Store) ReadEvents(ctx context.Context, after string, count int64, block time.Duration) ([]OutcomeEvent, error) {
	return s.events.Read(ctx, after, count, block)
}
func (s *Store) Replay(ctx context.Context, d DeadLetter, o ReplayOptions) (ReplayOutcome, error) {
	return s.op.Replay(ctx, d, o)
}
func (s *Store) ResumeAccount(ctx context.Context, account string) (bool, error) {
	return s.accounts.Resume(ctx, account)
}
func (s *Store) Run(ctx context.Context, name string) (RunStatus, error) {
	return s.runs.Get(ctx, name)
}
func (s *Store) RunDeadLetters(ctx context.Context, st *RunStatus) error {
	return s.runs.DeadLetters(ctx, st)
}
func (s *Store) SealRun(ctx context.Context, name string) error { return s.runs.Seal(ctx, name) }
func (s *Store) Stats(ctx context.Context) (Stats, error)       { return s.op.Stats(ctx) }
func (s *Store) Status(ctx context.Context, ref string, queues []string) (Status, error) {
	return s.op.Status(ctx, ref, queues)
}
