package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func (a *app) accountsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "accounts",
		Short: "List or resume integrated accounts whose updates are held",
		RunE:  groupRunE,
	}
	c.AddCommand(a.accountsListCmd(), a.accountsResumeCmd())
	return c
}

func (a *app) accountsListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List accounts that are parked or rate limited (NDJSON; a table on a terminal)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			holds, err := a.store.Accounts().Holds(c.Context())
			if err != nil {
				return usageError("list account holds: %w", err)
			}
			if !a.stdoutTTY {
				for _, h := range holds {
					if err := a.writeJSON(h); err != nil {
						return err
					}
				}
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ACCOUNT\tKIND\tSINCE\tUNTIL\tSTATUS\tREASON")
			for _, h := range holds {
				until := "-"
				if !h.Until.IsZero() {
					until = h.Until.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cell(h.Account, 40), h.Kind, h.Since.UTC().Format(time.RFC3339),
					until, statusCell(h.StatusCode), cell(h.Reason, 60))
			}
			return tw.Flush()
		},
	}
}

func (a *app) accountsResumeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "resume ACCOUNT",
		Short: "Lift the hold on an account so its updates flow again",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			ok, err := a.store.Accounts().Resume(c.Context(), args[0])
			if err != nil {
				return usageError("resume account %q: %w", args[0], err)
			}
			if !ok {
				a.logf("account %q had no hold; nothing changed", args[0])
			}
			return a.writeJSON(struct {
				Account string `json:"account"`
				Resumed bool   `json:"resumed"`
			}{args[0], ok})
		},
	}
}
