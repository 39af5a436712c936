package worker

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// persistentKeys lists the keys in Redis that have no expiry, each with a
// digit-free shape (so that one key per organization shows as one shape
// with a count).
func (p *pipeline) persistentKeys() (n int, shapes map[string]int) {
	p.t.Helper()
	ctx := context.Background()
	shapes = map[string]int{}
	iter := p.rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if strings.HasPrefix(k, "asynq:{") && strings.Contains(k, "}:t:") &&
			p.rdb.ZScore(ctx, k[:strings.Index(k, "}:t:")+1]+":completed", k[strings.Index(k, "}:t:")+4:]).Err() == nil {
			continue // a completed task: asynq's janitor deletes it when its retention ends
		}
		// PTTL is -1 for a key without expiry and -2 for one gone since the
		// SCAN (an account's record expiring a second after its last slot):
		// only -1 counts.
		if ttl := p.rdb.PTTL(ctx, k).Val(); ttl != -1 {
			continue
		}
		n++
		shape := strings.Map(func(r rune) rune {
			if (r >= '0' && r <= '9') || (r >= 'a' && r <= 'f') {
				return '#'
			}
			return r
		}, k)
		shapes[shape]++
	}
	if err := iter.Err(); err != nil {
		p.t.Fatal(err)
	}
	return n, shapes
}

// TestKeysWithoutExpiryDoNotGrow: after updates to many organizations have
// finished, the keys orgsync keeps without an expiry are a fixed handful
// (asynq's own, the dead-letter store, admission's own structures, the
// outcome stream),
// not one or more per organization or per update.
func TestKeysWithoutExpiryDoNotGrow(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, trutotest.Faults{}, nil)
	ctx := context.Background()
	round := func(from, n int) {
		var us []tasks.Update
		var keys []string
		for i := from; i < from+n; i++ {
			k := fmt.Sprintf("ttl-%06d", i)
			us = append(us, tasks.Update{ID: fmt.Sprintf("org-%06d", i), IntegratedAccountID: fmt.Sprintf("acct-%d", i%10),
				IdempotencyKey: k, Body: jsonRaw(`{"name":"x"}`)})
			keys = append(keys, k)
			p.mu.Lock()
			p.accountOf[k] = us[len(us)-1].IntegratedAccountID
			p.mu.Unlock()
		}
		if _, errs := p.producer.EnqueueMany(ctx, us, tasks.InRun(fmt.Sprintf("ttl-%d", from))); errs != nil {
			for _, err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		testrig.WaitFor(t, "every update completed and out of admission", 2*time.Minute, func() (bool, string) {
			st := p.states(keys)
			adm, err := p.store.Scheduler().Stats(ctx)
			return err == nil && st[tasks.StatusCompleted] == n && adm.Running+adm.Admitted+adm.Scheduled == 0,
				fmt.Sprint(st, adm, err)
		})
	}
	round(0, 200)
	before, shapes := p.persistentKeys()
	round(200, 2000)
	after, shapesAfter := p.persistentKeys()
	t.Logf("keys without expiry: %d after 200 organizations, %d after 2,200: %v", before, after, shapesAfter)
	if after > before {
		var grew []string
		for s, n := range shapesAfter {
			if n > shapes[s] {
				grew = append(grew, fmt.Sprintf("%s: %d -> %d", s, shapes[s], n))
			}
		}
		sort.Strings(grew)
		t.Errorf("keys without expiry grew with the organizations (%d -> %d):\n%s", before, after, strings.Join(grew, "\n"))
	}
}
