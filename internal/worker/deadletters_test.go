package worker

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// TestStartMovesSingleSlotDeadLetters: a worker moves the dead letters an
// older version wrote in the single-slot layout before it runs anything, and
// says how many.
func TestStartMovesSingleSlotDeadLetters(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	d := tasks.DeadLetter{TaskID: tasks.TaskID("acct", "k"), IdempotencyKey: "k", Class: tasks.ClassExhausted,
		DeadAt: time.Now().UTC().Truncate(time.Millisecond)}
	b, _ := json.Marshal(d)
	rdb.HSet(ctx, "orgsync:{dlq}:records", d.TaskID, b)
	rdb.ZAdd(ctx, "orgsync:{dlq}:index", redis.Z{Score: float64(d.DeadAt.UnixMilli()), Member: d.TaskID})
	fake := trutotest.NewServer(testToken)
	t.Cleanup(fake.Close)
	cfg := testConfig("", fake.URL)
	cfg.AdminAddr = ""
	var logs testrig.SyncBuffer
	w, err := New(ctx, cfg, WithRedis(rdb), WithLogger(NewLogger(&logs, "info")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.close)
	if !strings.Contains(logs.String(), `"dead_letters":1`) {
		t.Errorf("no log line says one dead letter moved:\n%s", logs.String())
	}
	got, err := tasks.NewStore(rdb).DeadLetters().Get(ctx, d.TaskID)
	if err != nil || !got.DeadAt.Equal(d.DeadAt) {
		t.Errorf("DeadLetter after the start = %+v, %v", got, err)
	}
	if n := rdb.Exists(ctx, "orgsync:{dlq}:records", "orgsync:{dlq}:index").Val(); n != 0 {
		t.Errorf("%d keys of the single-slot layout left", n)
	}
}
