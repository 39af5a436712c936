package tasks

import (
	"testing"
	"time"
)

// TestJitteredBackoff: built lazily, it is still an exponential backoff with
// 20 % jitter that stops after its retries.
func TestJitteredBackoff(t *testing.T) {
	t.Parallel()
	b := jittered(100*time.Millisecond, 3)
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	for i, w := range want {
		d, stop := b.Next()
		if stop {
			t.Fatalf("retry %d: stopped; want %d retries", i+1, len(want))
		}
		if d < w*8/10 || d > w*12/10 {
			t.Errorf("retry %d: waits %s; want %s within 20 %%", i+1, d, w)
		}
	}
	if _, stop := b.Next(); !stop {
		t.Error("a fourth retry; want it to stop after 3")
	}
}
