package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
)

// BareTaskType is the baseline's task type, distinct from orgsync's.
const BareTaskType = "bench:update_organization"

// BarePayload is the baseline's task payload: the update and nothing else.
type BarePayload struct {
	ID             string          `json:"id"`
	Account        string          `json:"integrated_account_id"`
	Body           json.RawMessage `json:"body"`
	IdempotencyKey string          `json:"idempotency_key"`
}

// BareTask is the baseline's task for p.
func BareTask(p BarePayload) (*asynq.Task, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode payload: %w", err)
	}
	return asynq.NewTask(BareTaskType, b), nil
}

// BareHandler is what a minimal asynq handler for the same job does: one
// PATCH, no ledger, no attempt history, no stored result, no holds. Done and
// Failed count its runs.
type BareHandler struct {
	Client  *http.Client
	BaseURL string
	Token   string
	Done    atomic.Int64
	Failed  atomic.Int64
}

// ProcessTask implements asynq.Handler.
func (h *BareHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	if err := h.patch(ctx, t); err != nil {
		h.Failed.Add(1)
		return err
	}
	h.Done.Add(1)
	return nil
}

func (h *BareHandler) patch(ctx context.Context, t *asynq.Task) error {
	var p BarePayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("decode payload: %v: %w", err, asynq.SkipRetry)
	}
	target := h.BaseURL + "/unified/user-directory/organizations/" + url.PathEscape(p.ID) +
		"?integrated_account_id=" + url.QueryEscape(p.Account)
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, target, bytes.NewReader(p.Body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+h.Token)
	req.Header.Set("Idempotency-Key", p.IdempotencyKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.Client.Do(req)
	if err != nil {
		return fmt.Errorf("PATCH organization %s: %w", p.ID, err)
	}
	_, copyErr := io.Copy(io.Discard, resp.Body)
	closeErr := resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("PATCH organization %s: status %d", p.ID, resp.StatusCode)
	}
	if err := errors.Join(copyErr, closeErr); err != nil {
		return fmt.Errorf("PATCH organization %s: read response: %w", p.ID, err)
	}
	return nil
}

// NewBareServer is the baseline's plain asynq server (not started) on
// redisAddr with its handler, at the given concurrency. Like orgsync's worker
// it keeps as many idle HTTP connections as its concurrency (the default
// transport keeps 2, and the baseline would then measure TCP setup) and
// checks for work every 50 ms.
func NewBareServer(redisAddr, baseURL, token string, concurrency int) (*asynq.Server, *asynq.ServeMux, *BareHandler) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = concurrency
	h := &BareHandler{Client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, BaseURL: baseURL, Token: token}
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: redisAddr}, asynq.Config{
		Concurrency:       concurrency,
		TaskCheckInterval: 50 * time.Millisecond,
		LogLevel:          asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(BareTaskType, h)
	return srv, mux, h
}
