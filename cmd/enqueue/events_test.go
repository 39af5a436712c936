package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
)

// TestEventsByRun: events prints the outcome events kept, oldest first, as
// NDJSON; --run keeps one run's, --limit and --after bound them.
func TestEventsByRun(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if r := cli(t, f.srv, "", "bulk", writeFile(t, nightly), "--run", "nightly"); r.code != 1 {
		t.Fatalf("bulk nightly: exit %d, want 1 (one invalid line); stderr %q", r.code, r.stderr)
	}
	if r := cli(t, f.srv, "", "bulk", writeFile(t, validLine("p1")+"\n"), "--run", "other"); r.code != 0 {
		t.Fatalf("bulk other: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := cliQuiet(t, f, "events"); r.code != 0 || r.stdout != "" {
		t.Errorf("events before any update ended: exit %d, stdout %q; want 0 and nothing", r.code, r.stdout)
	}
	f.mustWork(t, f.worker(t))

	all := decodeLines[tasks.OutcomeEvent](t, cli(t, f.srv, "", "events"))
	evs := decodeLines[tasks.OutcomeEvent](t, cli(t, f.srv, "", "events", "--run", "nightly"))
	byType := map[string]int{}
	for _, e := range evs {
		byType[e.Type]++
		if !e.InRun("nightly") {
			t.Errorf("events --run nightly printed %+v", e)
		}
		if e.Type != tasks.EventRunDone && (e.TaskID == "" || e.Account != "acc1" || e.Organization == "") {
			t.Errorf("event %+v: want the update's ids", e)
		}
	}
	// Updates end in the order admission lets them go; the run ends last.
	if want := map[string]int{"completed": 3, "dead": 1, "run_done": 1}; !cmp.Equal(byType, want) || evs[len(evs)-1].Type != tasks.EventRunDone {
		t.Fatalf("events of nightly by type %v, want %v, run_done last", byType, want)
	}
	if last := evs[len(evs)-1]; last.Run != "nightly" || last.Total != 4 || last.Completed != 3 || last.Dead != 1 {
		t.Errorf("run_done: %+v; want nightly's counts", last)
	}
	var others int
	for i, e := range all {
		if i > 0 && !streamIDLess(all[i-1].ID, e.ID) {
			t.Errorf("events out of order: %s then %s", all[i-1].ID, e.ID)
		}
		if e.InRun("other") {
			others++
		}
	}
	if len(all) != len(evs)+2 || others != 2 {
		t.Errorf("events: %d, %d of run other; want nightly's %d and other's 2", len(all), others, len(evs))
	}
	if got := decodeLines[tasks.OutcomeEvent](t, cli(t, f.srv, "", "events", "--run", "nightly", "--limit", "2")); len(got) != 2 || got[1].ID != evs[1].ID {
		t.Errorf("--limit 2: %+v; want nightly's first two events", got)
	}
	if got := decodeLines[tasks.OutcomeEvent](t, cli(t, f.srv, "", "events", "--after", all[2].ID)); len(got) != len(all)-3 || got[0].ID != all[3].ID {
		t.Errorf("--after the third: %d events; want the %d after it", len(got), len(all)-3)
	}
	if r := cliQuiet(t, f, "events", "--after", "$"); r.code != 0 || r.stdout != "" {
		t.Errorf("--after $ without --follow: exit %d, stdout %q; want 0 and nothing", r.code, r.stdout)
	}
	if r := cliQuiet(t, f, "events", "--run", "no-such-run"); r.code != 0 || r.stdout != "" {
		t.Errorf("--run of no run: exit %d, stdout %q; want 0 and nothing", r.code, r.stdout)
	}
}

// TestEventsTrimmed: reading on after an event the stream no longer keeps
// warns that events may be lost.
func TestEventsTrimmed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	var ids []string
	for range 3 {
		id, err := f.rdb.XAdd(ctx, &redis.XAddArgs{Stream: f.store.Events().Key(), Values: map[string]any{"type": "completed", "task_id": "u_1"}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	r := cli(t, f.srv, "", "events", "--after", ids[1])
	if got := decodeLines[tasks.OutcomeEvent](t, r); len(got) != 1 || got[0].ID != ids[2] || r.stderr != "" {
		t.Errorf("after a kept event: %+v, stderr %q; want the one after it, no warning", got, r.stderr)
	}
	if err := f.rdb.XTrimMaxLen(ctx, f.store.Events().Key(), 1).Err(); err != nil {
		t.Fatal(err)
	}
	r = cli(t, f.srv, "", "events", "--after", ids[0])
	if got := decodeLines[tasks.OutcomeEvent](t, r); len(got) != 1 || !strings.Contains(r.stderr, "no longer keeps event "+ids[0]) {
		t.Errorf("after a trimmed event: %+v, stderr %q; want the event kept and a warning", got, r.stderr)
	}
}

// TestEventsUsage: bad flags exit 2 before any connection.
func TestEventsUsage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"bad after", []string{"events", "--after", "yesterday"}, `--after "yesterday": expected an event id`},
		{"negative limit", []string{"events", "--limit", "-1"}, "--limit -1"},
		{"bad run name", []string{"events", "--run", "a\nb"}, "run: has a control character"},
		{"arguments", []string{"events", "nightly"}, "unknown command"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, nil, "", tt.args...)
			if r.code != 2 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", r.code, r.stderr, tt.want)
			}
		})
	}
}

// TestEventsFollow: --follow prints the events already kept, then new ones
// as they come, and exits 0 when interrupted.
func TestEventsFollow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	h := f.worker(t)
	bulk := func(run string, lines ...string) {
		t.Helper()
		if r := cli(t, f.srv, "", "bulk", writeFile(t, strings.Join(lines, "\n")+"\n"), "--run", run); r.code != 0 {
			t.Fatalf("bulk: exit %d, stderr %q", r.code, r.stderr)
		}
		f.mustWork(t, h)
	}
	printed := func(stdout *testrig.SyncBuffer, n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for strings.Count(stdout.String(), "\n") < n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling a condition: the follower printing n events
		}
	}
	bulk("a", validLine("o1"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var all, onlyB testrig.SyncBuffer
	doneAll := background(ctx, f, &all, "events", "--follow")
	doneB := background(ctx, f, &onlyB, "events", "--follow", "--run", "b")
	// Run a's two events are kept: once printed, the follower has caught up
	// and waits for new ones.
	printed(&all, 2)
	bulk("b", validLine("o2"), validLine("bad-3"))
	printed(&all, 5)
	printed(&onlyB, 3)
	cancel()
	for _, tt := range []struct {
		name string
		done <-chan result
		runs string
	}{{"all", doneAll, "a a b b b"}, {"--run b", doneB, "b b b"}} {
		r := <-tt.done
		checkJSONLines(t, r)
		if r.code != 0 {
			t.Errorf("%s: interrupted --follow: exit %d, stderr %q; want 0", tt.name, r.code, r.stderr)
		}
		var runs []string
		evs := decodeLines[tasks.OutcomeEvent](t, r)
		for _, e := range evs {
			run := "?"
			if e.InRun("a") {
				run = "a"
			} else if e.InRun("b") {
				run = "b"
			}
			runs = append(runs, run)
		}
		if strings.Join(runs, " ") != tt.runs || evs[len(evs)-1].Type != tasks.EventRunDone || evs[len(evs)-1].Run != "b" {
			t.Errorf("%s: events of runs %v, want %s ending with b's run_done", tt.name, runs, tt.runs)
		}
	}
}

// TestStreamIDLess orders stream ids as Redis does.
func TestStreamIDLess(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		x, y string
		less bool
	}{
		{"1-0", "2-0", true}, {"2-0", "1-5", false}, {"5-1", "5-2", true}, {"5", "5-1", true}, {"5-0", "5", false},
		{"10-0", "9-0", false},
	} {
		if got := streamIDLess(tt.x, tt.y); got != tt.less {
			t.Errorf("streamIDLess(%s, %s) = %v, want %v", tt.x, tt.y, got, tt.less)
		}
	}
}
