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
