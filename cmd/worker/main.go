// Command worker runs orgsync's organization updates from Redis against Truto.
//
// Configuration comes from flags and their environment twins (flags win);
// run `worker --help` for the list with defaults. Logs are JSON on stderr.
// SIGTERM or SIGINT drains: in-flight updates get --shutdown-timeout to finish.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.LookupEnv, os.Stderr))
}

// run returns the exit code: 0 after a clean drain, 2 for bad settings or no Redis, 1 otherwise.
func run(ctx context.Context, args []string, env func(string) (string, bool), stderr io.Writer) int {
	cfg, err := worker.LoadConfig(args, env, stderr)
	if errors.Is(err, worker.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "worker: invalid settings:\n%v\n", err)
		return 2
	}
	logger := worker.NewLogger(stderr, cfg.LogLevel)
	redis.SetLogger(&worker.RedisLogger{L: logger}) // keep stderr JSON
	w, err := worker.New(ctx, cfg, worker.WithLogger(logger))
	if err != nil {
		logger.Error("cannot start", "error", err.Error())
		return 2
	}
	if err := w.Run(ctx); err != nil {
		logger.Error("worker failed", "error", err.Error())
		return 1
	}
	return 0
}
