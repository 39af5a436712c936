// Package testrig is the set-up the worker tests (internal/worker, in
// process) and the end-to-end tests (internal/e2e, the built binaries) share:
// waiting for a condition, a buffer for logs written on other goroutines, a
// token file, and the search of a Redis for a secret.
//
// It is for tests only; nothing outside _test.go files imports it.
package testrig

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Poll is how often WaitFor asks its condition again.
const Poll = 50 * time.Millisecond

// WaitFor asks cond every Poll until it holds, and fails the test with what
// and cond's last status once timeout has passed. The timeout is a ceiling for
// a loaded machine, never the time a test takes.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	WaitEvery(t, Poll, what, timeout, cond)
}

// WaitEvery is WaitFor asking every interval: for conditions that cost a
// process start or a scan of thousands of keys.
func WaitEvery(t testing.TB, interval time.Duration, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, status := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, status)
		}
		time.Sleep(interval) // polling a condition
	}
}

// SyncBuffer is a bytes.Buffer safe for writers (a logger, a process's
// stderr) and a reader on other goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TokenFile writes token, newline-terminated, to a file readable only by
// its owner in a directory the test removes, and returns its path.
func TokenFile(t testing.TB, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// AssertNoSecretInRedis fails the test if any secret appears in a key or a
// value (its DUMP) of rdb's database, or if the database is empty (then the
// search proved nothing).
func AssertNoSecretInRedis(t testing.TB, rdb redis.UniversalClient, secrets ...string) {
	t.Helper()
	ctx := context.Background()
	n := 0
	search := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, "*", 1000).Iterator()
		for iter.Next(ctx) {
			key := iter.Val()
			n++
			dump, err := c.Dump(ctx, key).Result()
			if err != nil {
				dump = "" // expired between SCAN and DUMP: the key is still searched
			}
			for _, s := range secrets {
				if strings.Contains(key, s) {
					return fmt.Errorf("a secret appears in Redis key %q", key)
				}
				if strings.Contains(dump, s) {
					return fmt.Errorf("a secret appears in the value of Redis key %q", key)
				}
			}
		}
		return iter.Err()
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		// A Cluster's SCAN reaches one node: search every master.
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return search(ctx, c)
		})
	} else {
		err = search(ctx, rdb)
	}
	if err != nil {
		t.Fatalf("search Redis for secrets: %v", err)
	}
	if n == 0 {
		t.Fatal("no keys in Redis: the search for secrets proved nothing")
	}
}

// ParallelAtLeast raises how many parallel tests run at once (-parallel,
// by default GOMAXPROCS) to n, unless the command line set -parallel or the
// race detector is on. Call it from TestMain before m.Run, in a package whose
// tests spend their time waiting on clocks (outages, rate-limit windows,
// leases) rather than on the CPU: two cores then run four such tests as
// easily as two. Under -race the CPU is the limit and more tests at once only
// slow each other (internal/worker on 2 cores: 108 s two at a time, 171 s
// four at a time).
func ParallelAtLeast(n int) {
	if !flag.Parsed() {
		flag.Parse()
	}
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given && !raceDetector && n > runtime.GOMAXPROCS(0) {
		_ = flag.Set("test.parallel", strconv.Itoa(n))
	}
}
