// Command enqueue is orgsync's producer and operator CLI: it enqueues
// organization updates (one, or a whole NDJSON file), reports an update's
// status, and manages dead letters, account holds and queues.
//
// stdout carries only JSON (one object, or NDJSON for lists) so programs can
// read it; stderr carries messages for humans, and progress bars when it is a
// terminal. Exit codes: 0 success, 1 some input refused, 2 usage or connection
// error.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

func main() {
	// go-redis logs each failed dial on its own; the error we return already
	// says what went wrong, once.
	redis.SetLogger(quietLogger{})
	// SIGINT or SIGTERM cancels ctx: commands stop cleanly (events --follow
	// exits 0, a wait prints where the run stood). A second one kills at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// quietLogger drops go-redis's internal log lines.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
