// Package redisconn turns orgsync's REDIS_URL into a Redis connection shared
// by asynq and orgsync's own stores.
package redisconn

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// DefaultURL is used when REDIS_URL is unset.
const DefaultURL = "redis://127.0.0.1:6379/0"

// Forms lists the accepted URL forms, for error messages and help text.
const Forms = "redis://[:password@]host:port[/db], rediss://... (TLS), " +
	"redis-sentinel://[:password@]host:port[,host:port...][?master=NAME], " +
	"redis-cluster://[:password@]host:port[,host:port...]"

// Parse returns asynq's connection options for a REDIS_URL.
func Parse(raw string) (asynq.RedisConnOpt, error) {
	if raw == "" {
		raw = DefaultURL
	}
	if rest, ok := strings.CutPrefix(raw, "redis-cluster://"); ok {
		u, err := url.Parse("redis://" + rest)
		if err != nil {
			return nil, fmt.Errorf("REDIS_URL %s: %w; expected one of %s", redact(raw), err, Forms)
		}
		opt := asynq.RedisClusterClientOpt{Addrs: strings.Split(u.Host, ",")}
		if u.User != nil {
			opt.Username = u.User.Username()
			opt.Password, _ = u.User.Password()
		}
		return opt, nil
	}
	opt, err := asynq.ParseRedisURI(raw)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL %s is not understood (%v); expected one of %s", redact(raw), err, Forms)
	}
	return opt, nil
}

// Open parses raw and connects, checking the connection with a PING bounded
// by timeout. The caller closes the client.
func Open(ctx context.Context, raw string, timeout time.Duration) (redis.UniversalClient, error) {
	opt, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	rdb, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("REDIS_URL %s: unsupported connection type", redact(raw))
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("cannot reach Redis at %s: %w (is it running? set REDIS_URL)", redact(raw), err)
	}
	return rdb, nil
}

// redact hides a password in a Redis URL.
func redact(raw string) string {
	u, err := url.Parse(strings.Replace(raw, "redis-cluster://", "redis://", 1))
	if err != nil || u.User == nil {
		if err != nil {
			return "(unparseable URL)"
		}
		return raw
	}
	if _, has := u.User.Password(); has {
		return strings.Replace(raw, u.User.String()+"@", u.User.Username()+":xxxxx@", 1)
	}
	return raw
}
