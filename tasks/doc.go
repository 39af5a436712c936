// Package tasks owns orgsync's one task type: "update organization X of integrated
// account A with body B". It holds the update (the Go API producers use, and the
// NDJSON line format), its versioned queue payload and validation, idempotency keys,
// the producer that enqueues updates as asynq tasks, the handler that runs them
// against Truto, and the records the handler keeps in Redis: per-update state and
// results, account holds, and the dead-letter store with its replay.
//
// The failure policy the handler implements is the table in README.md
// ("Failure policy"); docs/design.md ("Failure policy") gives the rules
// behind it. See Handler for the contract of one run.
package tasks
