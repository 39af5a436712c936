package tasks

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
)

// pipelined sends the commands build queues in one round trip, and returns
// the first error among them (a missing key, redis.Nil, is not one). Scripts
// are queued by their SHA; when Redis does not know one (it restarted, or
// never saw it), every script is loaded and the commands that failed for it
// run again, in order, one at a time.
func (s *base) pipelined(ctx context.Context, build func(redis.Pipeliner)) error {
	pipe := s.rdb.Pipeline()
	build(pipe)
	cmds, _ := pipe.Exec(ctx)
	var again []redis.Cmder
	for _, c := range cmds {
		if err := c.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			again = append(again, c)
		}
	}
	if len(again) > 0 {
		if err := s.loadScripts(ctx); err != nil {
			return err
		}
		for _, c := range again {
			_ = s.rdb.Process(ctx, c) // sets the command's own answer and error
		}
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
