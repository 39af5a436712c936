package redisconn

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Pipelined sends the commands build queues in one round trip. Scripts are
// queued by their SHA (EvalSha); when Redis does not know one (it restarted,
// it is a new master, or it never saw it), load loads every script and the
// commands that failed for it run again, in order, one at a time. Each
// command keeps its own answer and error; the error returned is load's.
func Pipelined(ctx context.Context, rdb redis.UniversalClient, build func(redis.Pipeliner),
	load func(context.Context) error) ([]redis.Cmder, error) {
	pipe := rdb.Pipeline()
	build(pipe)
	cmds, _ := pipe.Exec(ctx) // each command's error is its own
	var again []redis.Cmder
	for _, c := range cmds {
		if err := c.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			again = append(again, c)
		}
	}
	if len(again) == 0 {
		return cmds, nil
	}
	if err := load(ctx); err != nil {
		return cmds, err
	}
	for _, c := range again {
		_ = rdb.Process(ctx, c) // sets the command's own answer and error
	}
	return cmds, nil
}
