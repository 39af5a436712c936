package redisconn

import (
	"context"
	"strings"
	"testing"
	"time"

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
