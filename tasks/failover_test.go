package tasks

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// failoverHook stands for a Sentinel failover between an update's end in
// the ledger and admission's finish: the master that acknowledged the
// ledger's end dies before its replica got it, and the promoted replica
// answers from then on. The first admission "finish" fails (the dead
// master), and at that moment the ledger's end, and the keys in lost, are
// gone (the promoted replica never heard of them).
type failoverHook struct {
	mu     sync.Mutex
	done   bool
	lose   func()
	failed int
}

func (f *failoverHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (f *failoverHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if slices.Contains(cmd.Args(), any("finish")) {
			f.mu.Lock()
			first := !f.done
			f.done = true
			if first {
				f.failed++
			}
			f.mu.Unlock()
			if first {
				f.lose()
				err := errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmd)
	}
}

func (f *failoverHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestHandlerFailoverBeforeFinish: the ledger's end (completed, or dead with
// its dead letter) is lost to a failover after the master acknowledged it,
// and the handler's next write reaches the promoted replica. Admission must
// not let the update go there without the ledger's end: it would be neither
// waiting nor ended, never run again. The handler writes the end again
// before it retries, so the promoted replica ends up with both.
func TestHandlerFailoverBeforeFinish(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		script []answer
		want   State
	}{
		{"completed", nil, StatusCompleted},
		{"dead", []answer{{status: 422, body: `{"statusCode":422,"message":"tier is invalid"}`}}, StatusDead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := newEnv(t, Policy{}, tc.script...)
			task := e.task(sampleUpdate("acct-1"))
			id := taskIDOf(t, task)
			hook := &failoverHook{lose: func() {
				e.mr.HDel(e.store.ledger.recKey(id), "state")
				e.mr.HDel(e.store.ledger.recKey(id), "result")
				e.mr.Del(e.store.dead.deadKey(id))
			}}
			e.store.rdb.AddHook(hook)
			_ = e.run(task)
			hook.mu.Lock()
			failed := hook.failed
			hook.mu.Unlock()
			if failed != 1 {
				t.Fatalf("admission's finish failed %d times; want the one failover", failed)
			}
			rec, err := e.store.ledger.Get(ctx, id)
			if err != nil || rec.State != tc.want {
				t.Errorf("the ledger after the failover: %+v (%v); want %s", rec, err, tc.want)
			}
			if tc.want == StatusDead {
				if _, err := e.store.dead.Get(ctx, id); err != nil {
					t.Errorf("the dead letter after the failover: %v; want it written again", err)
				}
			}
			if st, held, err := e.adm.Update(ctx, id); err != nil || held {
				t.Errorf("admission after the failover: %+v, held %v (%v); want the update finished", st, held, err)
			}
			if got := e.up.count(); got != 1 {
				t.Errorf("upstream saw %d requests; want 1", got)
			}
		})
	}
}
