package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/orgsync/orgsync/tasks"
)

// updateFlags are the flags of `enqueue update`.
type updateFlags struct {
	id, account      string
	body, bodyFile   string
	format           string
	ignoreRemoteData bool
	excludeFields    []string
	remoteQuery      []string
	key              string
	maxRetry         int
	at               string
}

// flagOfField names the flag that sets a field of the update, so a refusal
// tells the user what to change.
var flagOfField = map[string]string{
	"id":                    "--id",
	"integrated_account_id": "--account",
	"body":                  "--body or --body-file",
	"options":               "--format, --exclude-field or --remote-query",
	"idempotency_key":       "--idempotency-key",
	"max_retry":             "--max-retry",
}

func (a *app) updateCmd() *cobra.Command {
	var f updateFlags
	c := &cobra.Command{
		Use:   "update --id ID --account ACCOUNT (--body JSON | --body-file F) [flags]",
		Short: "Enqueue one organization update",
		Long: "Enqueue one organization update and print {\"task_id\", \"idempotency_key\", \"status\"}.\n" +
			"status is \"enqueued\", or \"duplicate\" when an update with the same idempotency key exists.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runUpdate(c, f) },
	}
	fl := c.Flags()
	fl.StringVar(&f.id, "id", "", "organization id")
	fl.StringVar(&f.account, "account", "", "integrated account id")
	fl.StringVar(&f.body, "body", "", "the JSON object to apply, e.g. '{\"name\":\"Acme\"}'")
	fl.StringVar(&f.bodyFile, "body-file", "", "read the body from this file (- for stdin)")
	fl.StringVar(&f.format, "format", "", "truto_response_format: unified, raw, normalized or stream")
	fl.BoolVar(&f.ignoreRemoteData, "ignore-remote-data", false, "truto_ignore_remote_data: leave remote_data out of the response")
	fl.StringArrayVar(&f.excludeFields, "exclude-field", nil, "truto_exclude_fields: a response field to leave out (repeatable)")
	fl.StringArrayVar(&f.remoteQuery, "remote-query", nil, "remote_query key=value passed to the provider (repeatable)")
	fl.StringVar(&f.key, "idempotency-key", "", "the update's idempotency key (default: a fresh random one)")
	fl.IntVar(&f.maxRetry, "max-retry", 0, "retry budget of this update (0: the worker's default)")
	fl.StringVar(&f.at, "at", "", "do not start before this time (RFC3339)")
	c.MarkFlagsMutuallyExclusive("body", "body-file")
	return c
}

func (a *app) runUpdate(c *cobra.Command, f updateFlags) error {
	u := tasks.Update{ID: f.id, IntegratedAccountID: f.account, IdempotencyKey: f.key}
	u.Options.ResponseFormat = f.format
	u.Options.IgnoreRemoteData = f.ignoreRemoteData
	u.Options.ExcludeFields = f.excludeFields
	for _, kv := range f.remoteQuery {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageError("--remote-query %q: expected key=value, e.g. --remote-query foo=bar", kv)
		}
		if u.Options.RemoteQuery == nil {
			u.Options.RemoteQuery = map[string]any{}
		}
		u.Options.RemoteQuery[k] = v
	}
	var opts []tasks.EnqueueOption
	if f.at != "" {
		t, err := time.Parse(time.RFC3339, f.at)
		if err != nil {
			return usageError("--at %q is not an RFC3339 time; write it like 2025-01-02T15:04:05Z", f.at)
		}
		opts = append(opts, tasks.At(t))
	}
	if f.maxRetry != 0 {
		opts = append(opts, tasks.WithMaxRetry(f.maxRetry))
	}
	body, err := a.readBody(f)
	if err != nil {
		return err
	}
	u.Body = body
	// Refuse before connecting: invalid input never needs Redis.
	if err := u.Validate(); err != nil {
		return a.refuseUpdate(err)
	}
	if f.maxRetry < 0 {
		return a.refuseUpdate(&tasks.ValidationError{Field: "max_retry", Reason: "must not be negative"})
	}
	if err := a.connect(c.Context()); err != nil {
		return err
	}
	out, err := a.producer.Enqueue(c.Context(), u, opts...)
	var ve *tasks.ValidationError
	switch {
	case errors.As(err, &ve):
		return a.refuseUpdate(err)
	case errors.Is(err, tasks.ErrDuplicate):
		a.logf("duplicate: an update with idempotency key %q already exists (task %s); nothing enqueued", out.IdempotencyKey, out.TaskID)
	case err != nil:
		return usageError("enqueue update of organization %q (account %q): %w", u.ID, u.IntegratedAccountID, err)
	}
	return a.writeJSON(out)
}

// readBody returns the body from --body or --body-file, compacted so the
// stored bytes do not carry incidental whitespace.
func (a *app) readBody(f updateFlags) (json.RawMessage, error) {
	raw := []byte(f.body)
	if f.bodyFile != "" {
		var r io.Reader = a.stdin
		name := "stdin"
		if f.bodyFile != "-" {
			file, err := os.Open(f.bodyFile)
			if err != nil {
				return nil, usageError("--body-file: %w; give a readable file with the JSON body", err)
			}
			defer file.Close()
			r, name = file, f.bodyFile
		}
		// Read one byte past the limit so an oversized body is refused, not truncated.
		b, err := io.ReadAll(io.LimitReader(r, tasks.MaxBodyBytes+1))
		if err != nil {
			return nil, usageError("--body-file: read %s: %w", name, err)
		}
		if len(b) > tasks.MaxBodyBytes {
			return nil, a.refuseUpdate(&tasks.ValidationError{Field: "body",
				Reason: fmt.Sprintf("%s is more than %d bytes, the body limit", name, tasks.MaxBodyBytes)})
		}
		raw = b
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) == nil {
		raw = buf.Bytes()
	}
	if len(raw) == 0 {
		return nil, nil
	}
	return raw, nil
}

// refuseUpdate reports an invalid update on both streams and exits 1.
func (a *app) refuseUpdate(err error) error {
	var ve *tasks.ValidationError
	if !errors.As(err, &ve) {
		return refused("invalid update: %w", err)
	}
	_ = a.writeJSON(struct {
		Status string `json:"status"`
		Field  string `json:"field"`
		Reason string `json:"reason"`
	}{"invalid", ve.Field, ve.Reason})
	hint := "fix it and run again"
	// A field can be a path into the update (body.remote_data.tier): its first part names the flag.
	top, _, _ := strings.Cut(ve.Field, ".")
	top, _, _ = strings.Cut(top, "[")
	if fl, ok := flagOfField[top]; ok {
		hint = "fix " + fl + " and run again"
	}
	return refused("invalid update: %s %s; %s", ve.Field, ve.Reason, hint)
}
