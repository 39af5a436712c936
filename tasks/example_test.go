package tasks_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/tasks"
)

// A producer in another Go service enqueues one update. The idempotency key,
// with the integrated account it belongs to, is the update's identity:
// enqueueing it again is reported, not repeated.
func ExampleProducer_Enqueue() {
	mr := miniredis.NewMiniRedis() // in production: redis.NewClient(...) on your Redis
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	producer := tasks.NewProducer(tasks.NewStore(rdb))
	defer producer.Close()

	u := tasks.Update{
		ID:                  "23423523",
		IntegratedAccountID: "62f44730-dd91-461e-bd6a-aedd9e0ad79d",
		Body:                json.RawMessage(`{"remote_data":{"tier":"gold"}}`),
		IdempotencyKey:      "crm-sync-2026-11-28-23423523",
	}
	got, err := producer.Enqueue(context.Background(), u, tasks.WithMaxRetry(5))
	fmt.Println(got.Status, got.TaskID, err)

	again, err := producer.Enqueue(context.Background(), u)
	fmt.Println(again.Status, again.TaskID == got.TaskID, err != nil)

	_, err = producer.Enqueue(context.Background(), tasks.Update{ID: "1", IntegratedAccountID: "a", Body: json.RawMessage(`[]`)})
	fmt.Println(err)
	// Output:
	// enqueued u_66ae14cbe5d8009c90cc02324bb038fd <nil>
	// duplicate true true
	// body: must be a JSON object
}

// A service learns the outcome of the updates it enqueued without polling:
// it reads orgsync's outcome stream through a consumer group, handles each
// event, then acknowledges it. An event not acknowledged (the service died
// while handling it) is delivered again: to this consumer when it comes
// back under the same name, or to another of the group after ClaimIdle.
func ExampleEvents_NewReader() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()

	reader, err := tasks.NewStore(rdb).Events().NewReader(tasks.EventReaderOptions{
		Group:    "billing-service", // one group per service that wants every event
		Consumer: "billing-1",       // stable across restarts
	})
	if err != nil {
		panic(err)
	}
	for ctx.Err() == nil {
		events, err := reader.Read(ctx) // waits up to 5 s for new events
		if err != nil {
			fmt.Println("read:", err) // Redis unreachable: try again
			continue
		}
		for _, e := range events {
			switch e.Type {
			case tasks.EventCompleted:
				fmt.Println("applied", e.IdempotencyKey, e.StatusCode)
			case tasks.EventDead:
				fmt.Println("dead", e.IdempotencyKey, e.Class, e.Reason)
			case tasks.EventRunDone:
				fmt.Println("run", e.Run, "done:", e.Completed, "completed,", e.Dead, "dead")
			}
			if err := reader.Ack(ctx, e.ID); err != nil {
				fmt.Println("ack:", err)
			}
		}
	}
}
