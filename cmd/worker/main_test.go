package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRunRefusesBadSettings(t *testing.T) {
	t.Parallel()
	env := func(k string) (string, bool) {
		if k == "TRUTO_API_TOKEN" {
			return "tok_secret_123", true
		}
		return "", false
	}
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"--concurrency", "lots"}, env, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "--concurrency") {
		t.Errorf("exit %d, stderr %q; want 2 and a message naming --concurrency", code, stderr.String())
	}
	stderr.Reset()
	code = run(context.Background(), []string{"--redis-url", "redis://127.0.0.1:1/0", "--admin-addr", ""}, env, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "cannot reach Redis") {
		t.Errorf("exit %d, stderr %q; want 2 and a message about Redis", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "tok_secret_123") {
		t.Error("the token appears in the worker's output")
	}
}
