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
	// Admission's settings are checked before Redis is dialled; a setting
	// that no longer exists is refused, not silently ignored.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-admitted", "0"}, "--max-admitted"},
		{[]string{"--lease", "0s"}, "--lease"},
		{[]string{"--parked-recheck", "30s"}, "parked-recheck"},
	} {
		stderr.Reset()
		args := append([]string{"--redis-url", "redis://127.0.0.1:1/0", "--admin-addr", ""}, tt.args...)
		if code := run(context.Background(), args, env, &stderr); code != 2 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message naming %s", tt.args, code, stderr.String(), tt.want)
		}
	}
}
