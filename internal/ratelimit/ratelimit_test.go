package ratelimit

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Limit{"50/10s": {50, 10 * time.Second}, "0": {}, " 5/1s ": {5, time.Second}} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "50", "50/", "x/10s", "0/10s", "-1/10s", "5/0s", "5/ten"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
