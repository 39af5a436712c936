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

// deadLetterKeys counts the keys of the dead-letter store, which
// persistentKeys leaves out of its count.
type deadLetterKeys struct {
	records int // orgsync:{<task id>}:dead, one per dead update by design
	buckets int // orgsync:{dlq:<k>}:index, at most 16 (tasks.deadLetterBuckets)
}

// persistentKeys lists the keys in Redis that have no expiry, each with a
// digit-free shape (so that one key per organization shows as one shape
// with a count), and counts the dead-letter store's keys apart.
func (p *pipeline) persistentKeys() (n int, shapes map[string]int, dead deadLetterKeys) {
	p.t.Helper()
	ctx := context.Background()
	shapes = map[string]int{}
	iter := p.rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if strings.HasPrefix(k, "asynq:{") && strings.Contains(k, "}:t:") {
			queue, id := k[:strings.Index(k, "}:t:")+1], k[strings.Index(k, "}:t:")+4:]
			if p.rdb.ZScore(ctx, queue+":completed", id).Err() == nil {
				continue // a completed task: asynq's janitor deletes it when its retention ends
			}
			if p.rdb.ZScore(ctx, queue+":archived", id).Err() == nil {
				continue // a dead update's copy in asynq's archive, which asynq caps (10,000 per queue, 90 days)
			}
		}
		// PTTL is -1 for a key without expiry and -2 for one gone since the
		// SCAN (an account's record expiring a second after its last slot):
		// only -1 counts.
		if ttl := p.rdb.PTTL(ctx, k).Val(); ttl != -1 {
			continue
		}
		switch {
		case strings.HasPrefix(k, "orgsync:{u_") && strings.HasSuffix(k, "}:dead") && strings.Count(k, "{") == 1:
			dead.records++
			continue
		case strings.HasPrefix(k, "orgsync:{dlq:") && strings.HasSuffix(k, "}:index"):
			dead.buckets++
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
	return n, shapes, dead
}

// TestKeysWithoutExpiryDoNotGrow: after updates to many organizations have
// finished, the keys orgsync keeps without an expiry are a fixed handful
// (asynq's own, the dead-letter index buckets, admission's own structures,
// the outcome stream), not one or more per organization or per update; the
// one exception is a dead update's dead letter, one record each, kept until
// it is replayed or purged. One update in ten dies (its account answers 422).
func TestKeysWithoutExpiryDoNotGrow(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, trutotest.Faults{AccountStatus: map[string]int{"acct-dead": 422}}, nil)
	ctx := context.Background()
	round := func(from, n int) {
		var us []tasks.Update
		var keys []string
		for i := from; i < from+n; i++ {
			k := fmt.Sprintf("ttl-%06d", i)
			account := fmt.Sprintf("acct-%d", i%10)
			if i%10 == 9 {
				account = "acct-dead"
			}
			us = append(us, tasks.Update{ID: fmt.Sprintf("org-%06d", i), IntegratedAccountID: account,
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
		testrig.WaitFor(t, "every update completed or dead, and out of admission", 2*time.Minute, func() (bool, string) {
			st := p.states(keys)
			adm, err := p.store.Scheduler().Stats(ctx)
			return err == nil && st[tasks.StatusCompleted] == n-n/10 && st[tasks.StatusDead] == n/10 &&
				adm.Running+adm.Admitted+adm.Scheduled == 0, fmt.Sprint(st, adm, err)
		})
	}
	round(0, 200)
	before, shapes, deadBefore := p.persistentKeys()
	round(200, 9800)
	after, shapesAfter, deadAfter := p.persistentKeys()
	t.Logf("keys without expiry: %d after 200 organizations, %d after 10,000: %v; the dead-letter store's: %+v, then %+v",
		before, after, shapesAfter, deadBefore, deadAfter)
	if deadBefore.records != 20 || deadAfter.records != 1000 || deadAfter.buckets > 16 {
		t.Errorf("dead-letter store: %+v after 20 dead updates, %+v after 1,000; want one record each, at most 16 index buckets",
			deadBefore, deadAfter)
	}
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
