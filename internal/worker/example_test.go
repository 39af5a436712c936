package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/worker"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// A worker is the handler (tasks.NewHandler) served by an asynq server,
// admission's admitter handing it the updates that may go now, and the
// leases that keep them its own: New wires them, Run serves until its
// context ends. Here on an embedded Redis and the fake Truto, with one
// update enqueued and its stored result read back.
func Example() {
	m, _ := miniredis.Run()
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	fake := trutotest.NewServer("example-token")
	defer fake.Close()

	env := map[string]string{"TRUTO_API_TOKEN": "example-token"}
	cfg, err := worker.LoadConfig([]string{"--base-url", fake.URL, "--admin-addr", ""},
		func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, err := worker.New(context.Background(), cfg,
		worker.WithRedis(rdb), worker.WithLogger(worker.NewLogger(io.Discard, "error")))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	p := tasks.NewProducer(w.Store())
	defer p.Close()
	e, _ := p.Enqueue(context.Background(), tasks.Update{ID: "org-1", IntegratedAccountID: "acct-1",
		IdempotencyKey: "example-1", Body: json.RawMessage(`{"remote_data":{"tier":"gold"}}`)})

	var st tasks.Status
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st, err = w.Store().Operator().Status(context.Background(), e.TaskID, nil); err == nil && st.State == tasks.StatusCompleted {
			break
		}
	}
	stop()
	<-done
	fmt.Println(e.Status, st.State, st.Result.StatusCode)
	fmt.Println("effects at the upstream:", fake.Stats().Effects)
	// Output:
	// enqueued completed 200
	// effects at the upstream: 1
}
