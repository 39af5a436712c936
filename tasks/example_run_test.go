package tasks_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/tasks"
)

// runLines is a small bulk file as a producer holds it: each update with its
// line number (line 3 was blank, so no update has it).
func runLines() []tasks.Line {
	u := func(org string) tasks.Update {
		return tasks.Update{ID: org, IntegratedAccountID: "acct-1", Body: json.RawMessage(`{"name":"` + org + `"}`)}
	}
	return []tasks.Line{{No: 1, Update: u("org-1")}, {No: 2, Update: u("org-2")}, {No: 4, Update: u("org-3")}}
}

// A batch job enqueues its updates as one run, then seals it: every line is
// in, so the run is done once every update in it has ended. Until a worker
// has run them, all three wait. Each line's idempotency key is derived with
// tasks.RunKey from the run's name, the line number and the line's bytes, as
// `enqueue bulk --run` does for a line without one, so enqueueing the same
// lines again under the same run (a re-run after a crash) adds nothing; an
// update without a key would get a random one, and apply twice.
func ExampleRuns_Seal() {
	mr := miniredis.NewMiniRedis() // in production: redis.NewClient(...) on your Redis
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	store := tasks.NewStore(rdb)
	producer := tasks.NewProducer(store)
	defer producer.Close()

	const run = "crm-2026-12-06"
	lines := runLines()
	for i := range lines {
		// The line's bytes, as a bulk file holds them: the key is stable across re-runs.
		raw, _ := json.Marshal(lines[i].Update)
		lines[i].Update.IdempotencyKey = tasks.RunKey(run, int(lines[i].No), raw)
	}
	results, errs := producer.EnqueueLines(ctx, lines, tasks.InRun(run))
	for i, r := range results {
		fmt.Println("line", lines[i].No, r.Status, errs[i])
	}
	if err := store.Runs().Seal(ctx, run); err != nil {
		panic(err)
	}
	st, err := store.Runs().Get(ctx, run)
	if err != nil {
		panic(err)
	}
	fmt.Printf("total %d, waiting %d, completed %d, dead %d, sealed %t, done %t\n",
		st.Total, st.Waiting, st.Completed, st.Dead, st.Sealed, st.Done)

	// The same file again (a re-run after a crash): nothing is enqueued twice.
	results, _ = producer.EnqueueLines(ctx, lines, tasks.InRun(run))
	fmt.Println("again:", results[0].Status, results[1].Status, results[2].Status)
	st, _ = store.Runs().Get(ctx, run)
	fmt.Println("total", st.Total)
	// Output:
	// line 1 enqueued <nil>
	// line 2 enqueued <nil>
	// line 4 enqueued <nil>
	// total 3, waiting 3, completed 0, dead 0, sealed true, done false
	// again: duplicate duplicate duplicate
	// total 3
}

// An operator (or the batch job) reads a run's results line by line, in line
// order, a page at a time whatever the run's size. With no worker running,
// every update is still waiting in admission; a completed line carries
// Truto's response and status, a dead one its error.
func ExampleRuns_EachResult() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	store := tasks.NewStore(rdb)
	producer := tasks.NewProducer(store)
	defer producer.Close()

	const run = "crm-2026-12-07"
	if _, errs := producer.EnqueueLines(ctx, runLines(), tasks.InRun(run)); errs[0] != nil {
		panic(errs[0])
	}
	if err := store.Runs().Seal(ctx, run); err != nil {
		panic(err)
	}

	err := store.Runs().EachResult(ctx, run, tasks.ResultFilter{}, func(r tasks.RunResult) error {
		fmt.Println(r.Line, r.State)
		return nil
	})
	fmt.Println(err)

	// Only the dead ones (none yet), as `enqueue runs results NAME --state dead` asks.
	dead := 0
	_ = store.Runs().EachResult(ctx, run, tasks.ResultFilter{State: tasks.StatusDead}, func(tasks.RunResult) error {
		dead++
		return nil
	})
	fmt.Println("dead:", dead)
	// Output:
	// 1 waiting
	// 2 waiting
	// 4 waiting
	// <nil>
	// dead: 0
}
