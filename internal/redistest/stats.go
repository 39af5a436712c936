package redistest

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/bench"
)

// Stats are the figures of one server a test logs and judges.
type Stats struct {
	Addr string
	// UsedMemory is INFO memory's used_memory, in bytes.
	UsedMemory int64
	// Keys is DBSIZE: the keys of database 0 (the only one a Cluster has).
	Keys int64
	// CommandsProcessed is INFO stats' total_commands_processed, since the
	// server started (the commands Stats sends included).
	CommandsProcessed int64
	// Calls counts the calls of each command (INFO commandstats), by
	// lower-case name ("evalsha", "hset", "cluster|slots").
	Calls map[string]int64
}

// Stats reads the server's memory, key count and command counts.
func (s *Server) Stats(ctx context.Context) (Stats, error) {
	st := Stats{Addr: s.Addr}
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Password: s.password})
	defer c.Close()
	info, err := c.Info(ctx, "memory", "stats").Result()
	if err != nil {
		return st, fmt.Errorf("%s: INFO: %w", s.Addr, err)
	}
	f := bench.InfoFields(info)
	if st.UsedMemory, err = strconv.ParseInt(f["used_memory"], 10, 64); err != nil {
		return st, fmt.Errorf("%s: used_memory %q", s.Addr, f["used_memory"])
	}
	if st.CommandsProcessed, err = strconv.ParseInt(f["total_commands_processed"], 10, 64); err != nil {
		return st, fmt.Errorf("%s: total_commands_processed %q", s.Addr, f["total_commands_processed"])
	}
	if st.Calls, err = bench.Calls(ctx, c); err != nil {
		return st, fmt.Errorf("%s: %w", s.Addr, err)
	}
	if st.Keys, err = c.DBSize(ctx).Result(); err != nil {
		return st, fmt.Errorf("%s: DBSIZE: %w", s.Addr, err)
	}
	return st, nil
}

// do sends one command to the server alone (not through a Cluster) and
// returns its error.
func (s *Server) do(ctx context.Context, args ...any) error {
	_, err := s.result(ctx, args...)
	return err
}

// result sends one command to the server alone and returns its answer as
// text.
func (s *Server) result(ctx context.Context, args ...any) (string, error) {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Password: s.password, MaxRetries: -1})
	defer c.Close()
	v, err := c.Do(ctx, args...).Result()
	if err != nil {
		return "", fmt.Errorf("%v: %w", args, err)
	}
	return fmt.Sprint(v), nil
}
