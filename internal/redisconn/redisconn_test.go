package redisconn

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
)

func TestParse(t *testing.T) {
	t.Parallel()
	c, err := Parse("")
	if o, ok := c.(asynq.RedisClientOpt); err != nil || !ok || o.Addr != "127.0.0.1:6379" {
		t.Errorf("Parse(\"\") = %#v, %v; want the default", c, err)
	}
	c, err = Parse("redis-cluster://:pw@a:1,b:2")
	if o, ok := c.(asynq.RedisClusterClientOpt); err != nil || !ok || len(o.Addrs) != 2 || o.Password != "pw" {
		t.Errorf("cluster form = %#v, %v", c, err)
	}
	if _, err := Parse("redis-sentinel://s1:26379,s2:26379?master=mymaster"); err != nil {
		t.Errorf("sentinel form: %v", err)
	}
	_, err = Parse("mysql://user:hunter2@host/db")
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "redis://") {
		t.Errorf("bad scheme: %v; want an error listing the forms, without the password", err)
	}
}

func TestOpenUnreachableSaysWhatToDo(t *testing.T) {
	t.Parallel()
	_, err := Open(context.Background(), "redis://:hunter2@127.0.0.1:1/0", time.Second)
	if err == nil || !strings.Contains(err.Error(), "REDIS_URL") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Open of a dead address = %v; want advice naming REDIS_URL and no password", err)
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ raw, want string }{
		{"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{"redis://:S3cr3t!pw@127.0.0.1:6379/0", "redis://:xxxxx@127.0.0.1:6379/0"},
		{"redis://:S3cr3t%21pw@127.0.0.1:6379/0", "redis://:xxxxx@127.0.0.1:6379/0"},
		{"redis://app:S3cr3t!pw@127.0.0.1:6379/0", "redis://app:xxxxx@127.0.0.1:6379/0"},
		{"redis://S3cr3t!pw@127.0.0.1:6379/0", "redis://xxxxx@127.0.0.1:6379/0"},
		{"redis://:p@ss/w?rd#x@127.0.0.1:6379/0", "redis://:xxxxx@127.0.0.1:6379/0"},
		{"redis://:pw@127.0.0.1:notaport/0", "redis://:xxxxx@127.0.0.1:notaport/0"},
		{"rediss://:S3cr3t!pw@redis.example:6380/1", "rediss://:xxxxx@redis.example:6380/1"},
		{"redis-sentinel://:S3cr3t!pw@s1:26379,s2:26379?master=mymaster", "redis-sentinel://:xxxxx@s1:26379,s2:26379?master=mymaster"},
		{"redis-cluster://:S3cr3t!pw@a:7000,b:7001", "redis-cluster://:xxxxx@a:7000,b:7001"},
		// The sentinels' credentials are query values, hidden like any but master= and db=.
		{"redis-sentinel://:S3cr3t!pw@s1:26379,s2:26379?master=mymaster&sentinel_password=S3nt%21nel",
			"redis-sentinel://:xxxxx@s1:26379,s2:26379?master=mymaster&sentinel_password=xxxxx"},
		{"redis-sentinel://s1:26379?sentinel_username=admin&master=m&SENTINEL_PASSWORD=S3nt!nel",
			"redis-sentinel://s1:26379?sentinel_username=xxxxx&master=m&SENTINEL_PASSWORD=xxxxx"},
		// An unescaped @ in a query value is the query's (as net/url reads
		// it), not the end of a user-info password: nothing after it shows.
		{"redis-sentinel://s1:26379,s2:26379?master=m&sentinel_password=S3nt@nelTail", "redis-sentinel://s1:26379,s2:26379?master=m&sentinel_password=xxxxx"},
		{"redis-sentinel://:S3cr3t!pw@s1:26379?master=m&sentinel_password=S3nt@nel#Ta@il", "redis-sentinel://:xxxxx@s1:26379?master=m&sentinel_password=xxxxx#xxxxx"},
		{"redis-sentinel://:S3cr@t!pw@s1:26379?master=m&sentinel_password=S3nt@nelTail", "redis-sentinel://:xxxxx@s1:26379?master=m&sentinel_password=xxxxx"},
		// A password holding "?k=v" and an @ in the user-info, or an
		// unescaped @ in a query value: either may be, so both are hidden.
		{"redis://:S3cr?x=1pw@127.0.0.1:6379/0", "redis://:xxxxx@xxxxx"},
		{"redis://app:S3cr?x=1pw@127.0.0.1:6379/0", "redis://app:xxxxx@xxxxx"},
		{"redis://127.0.0.1:6379/0?password=S3cr3t!pw&db=2&S3cr3t", "redis://127.0.0.1:6379/0?password=xxxxx&db=2&xxxxx"},
		{"redis://127.0.0.1:6379/0#S3cr3t", "redis://127.0.0.1:6379/0#xxxxx"},
		{"S3cr3t!pw@127.0.0.1:6379", "xxxxx@127.0.0.1:6379"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, Redact(tt.raw)); diff != "" {
				t.Errorf("Redact(%q) (-want +got):\n%s", tt.raw, diff)
			}
		})
	}
}

// TestErrorsNeverShowThePassword drives every path that turns a REDIS_URL
// into an error (a URL that does not parse, an unreachable server of each
// form) with passwords that URL escaping rewrites or that break parsing.
func TestErrorsNeverShowThePassword(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, raw, secret string
		wantInErr         string
	}{
		{"escaped by url", "redis://:S3cr3t!pw@127.0.0.1:1/0", "S3cr3t!pw", "cannot reach Redis at redis://:xxxxx@127.0.0.1:1/0"},
		{"user and escaped password", "redis://app:S3cr3t!pw@127.0.0.1:1/0", "S3cr3t!pw", "redis://app:xxxxx@"},
		{"tls", "rediss://:S3cr3t!pw@127.0.0.1:1/0", "S3cr3t!pw", "rediss://:xxxxx@127.0.0.1:1/0"},
		{"sentinel", "redis-sentinel://:S3cr3t!pw@127.0.0.1:1,127.0.0.1:2?master=m", "S3cr3t!pw", "redis-sentinel://:xxxxx@"},
		{"cluster", "redis-cluster://:S3cr3t!pw@127.0.0.1:1,127.0.0.1:2", "S3cr3t!pw", "redis-cluster://:xxxxx@"},
		{"sentinel, the sentinels' password", "redis-sentinel://:S3cr3t!pw@127.0.0.1:1,127.0.0.1:2?master=m&sentinel_password=S3nt%21nel",
			"S3nt!nel", "redis-sentinel://:xxxxx@127.0.0.1:1,127.0.0.1:2?master=m&sentinel_password=xxxxx"},
		{"sentinel, the sentinels' password holding @", "redis-sentinel://127.0.0.1:1,127.0.0.1:2?master=m&sentinel_password=S3nt@nelTail",
			"nelTail", "redis-sentinel://127.0.0.1:1,127.0.0.1:2?master=m&sentinel_password=xxxxx"},
		{"sentinel, the sentinels' password does not parse", "redis-sentinel://127.0.0.1:1?master=m&sentinel_password=hunter2%zz",
			"hunter2", "its query does not parse: invalid URL escape (hidden)"},
		{"password in query", "redis://127.0.0.1:1/0?password=S3cr3t!pw", "S3cr3t!pw", "?password=xxxxx"},
		{"port does not parse", "redis://:hunter2pw@127.0.0.1:notaport/0", "hunter2pw", "invalid port (hidden) after host"},
		{"cluster port does not parse", "redis-cluster://:hunter2pw@127.0.0.1:notaport", "hunter2pw", "invalid port (hidden) after host"},
		{"unescaped slash", "redis://:hunter/2pw@127.0.0.1:1/0", "hunter/2pw", "percent-encoded"},
		{"unescaped slash shows no piece", "redis://:hunter/2pw@127.0.0.1:1/0", "hunter", "percent-encoded"},
		{"unescaped hash", "redis://:hun#ter2pw@127.0.0.1:1/0", "hun#ter2pw", "percent-encoded"},
		{"unescaped hash shows no piece", "redis://:hun#ter2pw@127.0.0.1:1/0", "hun", "percent-encoded"},
		{"bad escape", "redis://:hunter2pw%zz@127.0.0.1:1/0", "%zz", "invalid URL escape (hidden)"},
		{"space", "redis://:hunter2 pw@127.0.0.1:1/0", "hunter2 pw", "invalid userinfo"},
		{"control character", "redis://:hunter2\npw@127.0.0.1:1/0", "hunter2", "invalid control character"},
		{"no scheme", "hunter2pw@127.0.0.1:6379", "hunter2pw", "no scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Open(context.Background(), tt.raw, time.Second)
			if err == nil {
				t.Fatalf("Open(%q) succeeded; want an error", tt.raw)
			}
			msg := err.Error()
			for _, s := range []string{tt.secret, url.QueryEscape(tt.secret), url.PathEscape(tt.secret)} {
				if strings.Contains(msg, s) {
					t.Errorf("the error shows the password (as %q): %s", s, msg)
				}
			}
			if !strings.Contains(msg, tt.wantInErr) {
				t.Errorf("error %q; want it to contain %q", msg, tt.wantInErr)
			}
		})
	}
}
