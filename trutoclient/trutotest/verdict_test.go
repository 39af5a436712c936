package trutotest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCountEffects(t *testing.T) {
	t.Parallel()
	byKey := map[string]int{"once": 1, "twice": 2, "thrice": 3, "other": 5}
	got := CountEffects(byKey, []string{"once", "twice", "thrice", "never"})
	want := EffectCount{Lost: 1, Duplicated: 2, ExtraEffects: 3}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CountEffects (-want +got):\n%s", diff)
	}
}
