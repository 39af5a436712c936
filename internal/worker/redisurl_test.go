package worker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// TestLogsNeverShowRedisPassword starts a worker against a Redis that wants a
// password URL escaping rewrites, and one handed a Redis client with a
// REDIS_URL that does not parse, and reads every log line for the password.
func TestLogsNeverShowRedisPassword(t *testing.T) {
	t.Parallel()
	const password = "S3cr3t!pw"
	tests := []struct {
		name string
		// url builds the REDIS_URL from the private server's address.
		url    func(addr string) string
		shared bool // hand the worker a client (WithRedis) instead of dialing the URL
		want   string
	}{
		{"startup log", func(addr string) string { return "redis://:" + password + "@" + addr + "/0" }, false,
			`"msg":"worker started"`},
		{"url that does not parse", func(string) string { return "redis://:" + password + "@127.0.0.1:notaport/0" }, true,
			"invalid port (hidden) after host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			if err := srv.Client().ConfigSet(context.Background(), "requirepass", password).Err(); err != nil {
				t.Fatal(err)
			}
			fake := trutotest.NewServer(testToken)
			t.Cleanup(fake.Close)
			var logs testrig.SyncBuffer
			opts := []Option{WithLogger(NewLogger(&logs, "debug"))}
			if tt.shared {
				rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, Password: password})
				t.Cleanup(func() { _ = rdb.Close() })
				opts = append(opts, WithRedis(rdb))
			}
			w, err := New(context.Background(), testConfig(tt.url(srv.Addr), fake.URL), opts...)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			testrig.WaitFor(t, tt.want+" in the log", 10*time.Second, func() (bool, string) {
				return strings.Contains(logs.String(), tt.want), logs.String()
			})
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if strings.Contains(logs.String(), "S3cr3t") {
				t.Errorf("the Redis password appears in the log:\n%s", logs.String())
			}
			if !tt.shared && !strings.Contains(logs.String(), `"redis":"redis://:xxxxx@`+srv.Addr+`/0"`) {
				t.Errorf("the startup log does not name the Redis it uses, redacted:\n%s", logs.String())
			}
		})
	}
}
