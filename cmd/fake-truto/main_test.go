package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

func TestRun(t *testing.T) {
	t.Parallel()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	stderr := make(chan string, 1)
	go func() { b, _ := io.ReadAll(errR); stderr <- string(b) }()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--token-file", tokenFile, "--account-limit", "2/10s",
			"--org-status", "bad=422"}, outW, errW)
		outW.Close()
		errW.Close()
	}()

	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("read the address line: %v", err)
	}
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	var addr struct{ Addr string }
	if err := json.Unmarshal([]byte(line), &addr); err != nil || !strings.HasPrefix(addr.Addr, "http://127.0.0.1:") {
		t.Fatalf("address line %q: %v", line, err)
	}

	do := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, addr.Addr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	var got []int
	for _, id := range []string{"o1", "bad", "o1", "o1"} {
		st, _ := do(http.MethodPatch, "/unified/user-directory/organizations/"+id+"?integrated_account_id=a", `{"seq":1}`)
		got = append(got, st)
	}
	if diff := cmp.Diff([]int{200, 422, 200, 429}, got); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	st, b := do(http.MethodGet, "/_fake/stats", "")
	var stats trutotest.Stats
	if err := json.Unmarshal(b, &stats); st != 200 || err != nil {
		t.Fatalf("/_fake/stats: %d %v %s", st, err, b)
	}
	want := trutotest.Stats{Requests: 4, ByStatus: map[int]int{200: 2, 422: 1, 429: 1}, Effects: 2, RateLimited: 1, Unkeyed: 4}
	if diff := cmp.Diff(want, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	logs := <-stderr
	if strings.Contains(logs, "s3cret") {
		t.Errorf("logs leak the token: %s", logs)
	}
	if !strings.Contains(logs, `"msg":"listening"`) || !strings.Contains(logs, `"msg":"stopped"`) {
		t.Errorf("logs lack start/stop lines: %s", logs)
	}
}

func TestRunFlagErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantText string
	}{
		{"no token", []string{}, "--token"},
		{"both tokens", []string{"--token", "a", "--token-file", "f"}, "--token-file"},
		{"missing token file", []string{"--token-file", "/nonexistent/x"}, "--token-file"},
		{"bad limit", []string{"--token", "a", "--account-limit", "50"}, "account-limit"},
		{"bad limit window", []string{"--token", "a", "--token-limit", "5/soon"}, "N/window"},
		{"bad latency", []string{"--token", "a", "--latency", "fast"}, "latency"},
		{"bad error rate", []string{"--token", "a", "--error-rate", "500=2"}, "STATUS=PROBABILITY"},
		{"rates over 1", []string{"--token", "a", "--error-rate", "500=0.7", "--error-rate", "502=0.7"}, "error_rates"},
		{"bad account status", []string{"--token", "a", "--account-status", "acc"}, "account-status"},
		{"bad org status", []string{"--token", "a", "--org-status", "o=200"}, "KEY=STATUS"},
		{"unknown flag", []string{"--token", "a", "--nope"}, "nope"},
		{"argument", []string{"--token", "a", "extra"}, "extra"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr strings.Builder
			err := run(t.Context(), tt.args, &stdout, &stderr)
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("run(%q) = %v, want a usage error (exit 2)", tt.args, err)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not mention %q", err, tt.wantText)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

func TestParseLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want trutotest.Limit
		ok   bool
	}{
		{"50/10s", trutotest.Limit{Requests: 50, Window: trutotest.Duration(10 * time.Second)}, true},
		{"0", trutotest.Limit{}, true},
		{"5/1m", trutotest.Limit{Requests: 5, Window: trutotest.Duration(time.Minute)}, true},
		{"5/0s", trutotest.Limit{}, false},
		{"-1/1s", trutotest.Limit{}, false},
		{"", trutotest.Limit{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := parseLimit(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("parseLimit(%q) error = %v, want ok %v", tt.in, err, tt.ok)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseLimit(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}
