package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/tasks"
)

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status TASK_ID|IDEMPOTENCY_KEY",
		Short: "Print everything known about one update",
		Long: "Print the state of one update (pending, scheduled, active, retry, waiting, completed, dead),\n" +
			"its attempts, last error, and the stored response when completed. Exit 1 when nothing knows it.",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			st, err := a.store.Status(c.Context(), args[0], []string{a.queue})
			switch {
			case errors.Is(err, tasks.ErrNotFound):
				return refused("no update with task id or idempotency key %q in queue %q, the ledger or the dead letters "+
					"(check the reference; pass --queue if it went to another queue)", args[0], a.queue)
			case err != nil:
				return usageError("status of %q: %w", args[0], err)
			}
			return a.writeJSON(st)
		},
	}
}

func (a *app) statsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Print queue counts, dead letters by status and class, account holds, the circuit, the oldest waiting update",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			st, err := a.store.Stats(c.Context())
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
