package admission

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/internal/redistest"
)

// BenchmarkCycle is admission's own cost per update on a private
// redis-server: add, admit (in batches), start, finish, with no limits. It
// reports updates/s and Redis commands per update (from INFO commandstats,
// the script's inner commands included).
//
//	go test -run '^$' -bench Cycle -benchtime 20000x ./internal/admission/
func BenchmarkCycle(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client()
	ctx := context.Background()
	s := New(rdb, Config{MaxAdmitted: 1000, Batch: 64})
	before := commands(b, rdb)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		a := "A" + strconv.Itoa(i%50)
		if _, err := s.Add(ctx, Item{ID: "u" + strconv.Itoa(i), Account: a, Org: a + "/o" + strconv.Itoa(i), Queue: "q", Payload: []byte("{}")}); err != nil {
			b.Fatal(err)
		}
	}
	done := 0
	for done < b.N {
		tickets, _, err := s.Admit(ctx, "p")
		if err != nil {
			b.Fatal(err)
		}
		for _, tk := range tickets {
			if _, _, err := s.Start(ctx, "", tk.ID, tk.Gen, "p"); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Finish(ctx, "", tk.ID, tk.Gen); err != nil {
				b.Fatal(err)
			}
			done++
		}
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "updates/s")
	b.ReportMetric(float64(commands(b, rdb)-before)/float64(b.N), "redis-cmds/update")
}

// BenchmarkBacklogFairness: one account's backlog of b.N updates, then 10
// accounts with 20 each, 10/s per account, on real time: how long the 200
// take from their enqueue (their own limit allows 1.9 s).
//
//	go test -run '^$' -bench Backlog -benchtime 100000x ./internal/admission/
func BenchmarkBacklogFairness(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client()
	ctx := context.Background()
	s := New(rdb, Config{Account: ratelimit.Limit{Requests: 10, Window: time.Second}, Headroom: -1, MaxAdmitted: 10000, Batch: 64})
	if err := script.Load(ctx, rdb).Err(); err != nil {
		b.Fatal(err)
	}
	for lo := 0; lo < b.N; lo += 5000 {
		pipe := rdb.Pipeline()
		for i := lo; i < min(lo+5000, b.N); i++ {
			script.Run(ctx, pipe, []string{shardBase("orgsync", 0) + "accts"}, "add", 0, "1", fmt.Sprint("big", i), "BIG", fmt.Sprint("BIG/o", i), "q", 0, "{}", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	for a := range 10 {
		for i := range 20 {
			acct := fmt.Sprint("small", a)
			if _, err := s.Add(ctx, Item{ID: fmt.Sprint(acct, "-", i), Account: acct, Org: fmt.Sprint(acct, "/o", i), Queue: "q"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	small := 0
	for small < 200 {
		tickets, next, err := s.Admit(ctx, "p")
		if err != nil {
			b.Fatal(err)
		}
		for _, tk := range tickets {
			if strings.HasPrefix(tk.ID, "small") {
				small++
			}
			if _, err := s.Finish(ctx, "", tk.ID, tk.Gen); err != nil {
				b.Fatal(err)
			}
		}
		if d := time.Until(next); d > 0 {
			_, _ = s.Wait(ctx, 0, d)
		}
	}
	b.ReportMetric(time.Since(start).Seconds(), "s-for-the-200")
}

func commands(b *testing.B, rdb *redis.Client) int64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		_, rest, ok := strings.Cut(line, ":calls=")
		if !ok || strings.HasPrefix(line, "cmdstat_info") {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, _ := strconv.ParseInt(n, 10, 64)
		total += v
	}
	return total
}
