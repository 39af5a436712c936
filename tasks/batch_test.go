package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/redistest"
)

// roundTrips counts the client's calls to Redis: one per command sent alone,
// one per pipeline.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { r.n.Add(1); return next(ctx, cmd) }
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { r.n.Add(1); return next(ctx, cmds) }
}

// TestEnqueueLinesBatches: a run of 1,200 lines goes in a fixed handful of
// round trips per batch of DefaultBatchSize; lines keep their numbers, each
// organization's updates their order; a re-run adds nothing and counts the
// ended ones at once.
func TestEnqueueLinesBatches(t *testing.T) {
	t.Parallel()
	s, rdb := realStore(t)
	rt := &roundTrips{}
	rdb.AddHook(rt)
	p := NewProducer(s)
	ctx := context.Background()
	const n = 1200
	lines := make([]Line, n)
	for i := range lines {
		lines[i] = Line{No: int64(i + 1), Update: Update{ID: fmt.Sprintf("org-%d", i%100), IntegratedAccountID: fmt.Sprintf("acct-%d", i%7),
			Body: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, i)), IdempotencyKey: fmt.Sprintf("k-%d", i)}}
	}
	lines[5].Update.Body = json.RawMessage(`"not an object"`)
	before := rt.n.Load()
	res, errs := p.EnqueueLines(ctx, lines, InRun("batch"))
	trips := rt.n.Load() - before
	batches := (n + DefaultBatchSize - 1) / DefaultBatchSize
	t.Logf("%d lines in %d round trips (%d batches)", n, trips, batches)
	if trips > int64(6*batches) {
		t.Errorf("%d round trips for %d batches; want at most 6 per batch", trips, batches)
	}
	var ve *ValidationError
	if !errors.As(errs[5], &ve) {
		t.Errorf("line 6: %v, want a ValidationError", errs[5])
	}
	for i, err := range errs {
		if i != 5 && (err != nil || res[i].Status != "enqueued") {
			t.Fatalf("line %d: %+v, %v", i+1, res[i], err)
		}
	}
	st := mustRun(t, s, "batch")
	if st.Total != n-1 || st.Waiting != n-1 {
		t.Fatalf("run %+v; want %d waiting", st, n-1)
	}
	// Each organization's updates took their places in slice order.
	last := map[string]int64{}
	for i := range lines {
		if i == 5 {
			continue
		}
		u, ok, err := s.adm.Update(ctx, res[i].TaskID)
		if err != nil || !ok {
			t.Fatalf("line %d not in admission: %v", i+1, err)
		}
		org := lines[i].Update.IntegratedAccountID + "/" + lines[i].Update.ID
		if u.Seq <= last[org] {
			t.Fatalf("line %d of %s: seq %d after %d", i+1, org, u.Seq, last[org])
		}
		last[org] = u.Seq
	}
	// Line 10 completed and line 20 dead meanwhile; the same file again adds
	// nothing and counts both at once.
	if _, err := s.ledger.complete(ctx, res[9].TaskID, nil, Result{TaskID: res[9].TaskID, StatusCode: 200}, nil, false); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetters().Put(ctx, DeadLetter{TaskID: res[19].TaskID, Class: "permanent", StatusCode: 422}); err != nil {
		t.Fatal(err)
	}
	_ = s.Runs().Seal(ctx, "batch")
	res2, errs2 := p.EnqueueLines(ctx, lines, InRun("batch"))
	for i, err := range errs2 {
		if i != 5 && !errors.Is(err, ErrDuplicate) {
			t.Fatalf("line %d again: %+v, %v; want a duplicate", i+1, res2[i], err)
		}
	}
	st = mustRun(t, s, "batch")
	if st.Total != n-1 || st.Completed != 1 || st.Dead != 1 || st.Waiting != n-3 {
		t.Errorf("after the re-run: %+v; want %d in all, 1 completed, 1 dead", st, n-1)
	}
}

// TestEnqueueLinesCommandsPerLine: a batch of new lines costs Redis a fixed
// number of commands per line, the scripts' own commands counted (30 when
// the scripts did per line what they now do per batch): in a run, 8 in the
// pipeline (the run's name in the ledger record, the key index, the
// duplicate checks), about 4.6 inside admission (is the id in, its place in
// its organization's line, its hash, does it head the line) and almost none
// inside the run's script; without a run, 2 fewer. Exact counts, from
// Redis's INFO before and after; 50 accounts, one organization per line.
func TestEnqueueLinesCommandsPerLine(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	p := NewProducer(NewStore(srv.Client()))
	ctx := context.Background()
	const n = 5 * DefaultBatchSize
	batch := func(from int) []Line {
		lines := make([]Line, n)
		for i := range lines {
			j := from + i
			lines[i] = Line{No: int64(j + 1), Update: Update{ID: fmt.Sprintf("org-%d", j), IntegratedAccountID: fmt.Sprintf("acct-%d", j%50),
				Body: json.RawMessage(`{"name":"x"}`), IdempotencyKey: fmt.Sprintf("k-%d", j)}}
		}
		return lines
	}
	for _, tt := range []struct {
		name string
		opts []EnqueueOption
		max  float64
	}{
		{"in a run", []EnqueueOption{InRun("r")}, 13},
		{"without a run", nil, 11},
	} {
		// A first batch creates the run and the accounts; the second is measured.
		from := 0
		if tt.opts == nil {
			from = 2 * n
		}
		if _, errs := p.EnqueueLines(ctx, batch(from), tt.opts...); errs[0] != nil {
			t.Fatal(errs[0])
		}
		before, err := srv.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, errs := p.EnqueueLines(ctx, batch(from+n), tt.opts...)
		for i, err := range errs {
			if err != nil {
				t.Fatalf("line %d: %v", i+1, err)
			}
		}
		after, err := srv.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		perLine := float64(after.CommandsProcessed-before.CommandsProcessed) / n
		t.Logf("%s: %.2f Redis commands per line", tt.name, perLine)
		if perLine > tt.max {
			t.Errorf("%s: %.2f Redis commands per line, want at most %.0f", tt.name, perLine, tt.max)
		}
	}
}
