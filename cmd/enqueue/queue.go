package main

import (
	"strings"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"
)

func (a *app) queueCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "queue",
		Short: "Pause or resume an asynq queue (workers stop or start taking its tasks)",
		RunE:  groupRunE,
	}
	c.AddCommand(a.queuePauseCmd(true), a.queuePauseCmd(false))
	return c
}

func (a *app) queuePauseCmd(pause bool) *cobra.Command {
	use, short := "resume NAME", "Let workers take tasks from the queue again"
	if pause {
		use, short = "pause NAME", "Stop workers from taking tasks from the queue (running tasks finish)"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			ins := asynq.NewInspectorFromRedisClient(a.rdb)
			var err error
			if pause {
				err = ins.PauseQueue(name)
			} else {
				err = ins.UnpauseQueue(name)
			}
			changed := true
			// asynq does not export these errors; pausing twice is not a failure.
			if err != nil && (strings.Contains(err.Error(), "already paused") || strings.Contains(err.Error(), "is not paused")) {
				changed, err = false, nil
			}
			if err != nil {
				return refused("queue %q: %w (queue names are non-empty; see `enqueue stats` for the queues)", name, err)
			}
			return a.writeJSON(struct {
				Queue   string `json:"queue"`
				Paused  bool   `json:"paused"`
				Changed bool   `json:"changed"`
			}{name, pause, changed})
		},
	}
}
