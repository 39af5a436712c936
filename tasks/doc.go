// Package tasks owns orgsync's one task type: "update organization X of integrated
// account A with body B". It holds the update (the Go API producers use, and the
// NDJSON line format), its versioned queue payload and validation, idempotency keys,
// the producer that enqueues updates as asynq tasks, the handler that runs them
// against Truto, and the records the handler keeps in Redis: per-update state and
// results, account holds, and the dead-letter store with its replay.
//
// The records live in a Store (NewStore), split by what each part owns, the way
// asynq splits Client, Server and Inspector. Each accessor returns one part,
// built once with the store and sharing its connection and configuration:
//
//   - Ledger: each update's state, retry budget, attempt history and result,
//     and which accounts used an idempotency key (Get, Attempts).
//   - Accounts: the holds on integrated accounts, kept in admission (Pause,
//     Park, Resume, Hold, Holds).
//   - Lines: each organization's line, which orders its updates, and the
//     newest update applied to it, which the stale-replay guard compares
//     (LastApplied).
//   - DeadLetters: the updates that ended dead (Put, Get, Delete, Count, Each).
//   - Runs: named sets of updates enqueued together and what each line became
//     (Seal, Get, List, EachResult, DeadLetters).
//   - Events: the outcome stream (Read, Count, LastID, NewReader).
//   - Operator: what an operator does across the parts; the enqueue CLI and
//     the admin API both use it (Status, Find, Stats, Replay, Purge).
//   - Scheduler: admission (internal/admission), where updates wait.
//
// The Producer and the Handler write the parts through the store's unexported
// methods; everything else reads and acts through the accessors.
//
// The failure policy the handler implements is the table in README.md
// ("Failure policy"); docs/design.md ("Failure policy") gives the rules
// behind it. See Handler for the contract of one run.
package tasks
