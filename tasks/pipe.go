package tasks

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/redisconn"
)

// pipelined sends the commands build queues in one round trip
// (redisconn.Pipelined: scripts by SHA, loaded and run again if Redis does
// not know them), and returns the first error among them (a missing key,
// redis.Nil, is not one).
func (s *base) pipelined(ctx context.Context, build func(redis.Pipeliner)) error {
	cmds, err := redisconn.Pipelined(ctx, s.rdb, build, s.loadScripts)
	if err != nil {
		return err
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
	}
	return nil
}

// loadScripts loads every Lua script the store queues in pipelines.
func (s *base) loadScripts(ctx context.Context) error {
	if err := admission.LoadScript(ctx, s.rdb); err != nil {
		return fmt.Errorf("load admission's script: %w", err)
	}
	for _, sc := range []*redis.Script{runScript, setLastApplied} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("load a script: %w", err)
		}
	}
	return nil
}
