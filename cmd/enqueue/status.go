package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/tasks"
)

func (a *app) statusCmd() *cobra.Command {
	var l tasks.Lookup
	c := &cobra.Command{
		Use:   "status TASK_ID|IDEMPOTENCY_KEY [--account ACCOUNT] [--key | --task-id]",
		Short: "Print everything known about one update",
		Long: "Print the state of one update (waiting in admission, and why; pending: admitted, in asynq's queue for\n" +
			"the next free worker; active; completed; dead), its attempts, last error, and the stored response\n" +
			"when completed.\n" +
			"The reference is tried as a task id and as an idempotency key. Each integrated account has its own\n" +
			"keys, so a key several accounts used, or a reference that is one update's task id and another's key,\n" +
			"matches several updates: they are listed, and --account (the key's account), --key or --task-id picks one.\n" +
			"Exit 1 when nothing knows the reference or it is ambiguous.",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			l.Ref = args[0]
			if l.AsTaskID && l.Account != "" {
				return usageError("--account picks among the updates of an idempotency key; a task id names one update: leave out --account or --task-id")
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			st, err := a.store.Operator().Find(c.Context(), l, []string{a.queue})
			var ae *tasks.AmbiguousError
			switch {
			case errors.As(err, &ae):
				if werr := a.writeJSON(struct {
					Status  string        `json:"status"`
					Ref     string        `json:"ref"`
					Matches []tasks.Match `json:"matches"`
				}{"ambiguous", ae.Ref, ae.Matches}); werr != nil {
					return werr
				}
				return refused("%v; pick one with --account ACCOUNT (the key's account), --key or --task-id", ae)
			case errors.Is(err, tasks.ErrNotFound):
				return refused("no update with task id or idempotency key %q in queue %q, the ledger or the dead letters "+
					"(check the reference; pass --queue if it went to another queue, and --account for a key whose update "+
					"was last enqueued or dead-lettered more than %s ago)", args[0], a.queue, a.resultTTL+tasks.DefaultMaxAge)
			case err != nil:
				return usageError("status of %q: %w", args[0], err)
			}
			return a.writeJSON(st)
		},
	}
	fl := c.Flags()
	fl.StringVar(&l.Account, "account", "", "the integrated account whose idempotency key the reference is")
	fl.BoolVar(&l.AsKey, "key", false, "the reference is an idempotency key, not a task id")
	fl.BoolVar(&l.AsTaskID, "task-id", false, "the reference is a task id, not an idempotency key")
	c.MarkFlagsMutuallyExclusive("key", "task-id")
	return c
}

func (a *app) statsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Print queue counts, admission (accounts scheduled, updates admitted and running, parks), dead letters by status and class, account holds, the circuit",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			st, err := a.store.Operator().Stats(c.Context())
			if err != nil {
				return usageError("stats: %w", err)
			}
			cs, err := circuit.New(a.rdb, circuit.Config{}).State(c.Context())
			if err != nil {
				return usageError("stats: %w", err)
			}
			return a.writeJSON(struct {
				tasks.Stats
				Circuit circuit.State `json:"circuit"`
			}{st, cs})
		},
	}
}
