package trutotest

// EffectCount is the verdict on a set of updates, by their idempotency keys:
// how many never took effect, and how many took effect more than once.
type EffectCount struct {
	Lost         int // keys with no effect
	Duplicated   int // keys with more than one effect
	ExtraEffects int // effects beyond the first, summed over the keys
}

// CountEffects judges keys against per-key effect counts, as Fake.EffectsByKey
// returns them or GET /_fake/keys serves them, so in-process tests and tests
// of the standalone fake reach the verdict the same way.
func CountEffects(byKey map[string]int, keys []string) EffectCount {
	var c EffectCount
	for _, k := range keys {
		switch n := byKey[k]; {
		case n == 0:
			c.Lost++
		case n > 1:
			c.Duplicated++
			c.ExtraEffects += n - 1
		}
	}
	return c
}

// CountEffects judges keys against what this fake applied.
func (f *Fake) CountEffects(keys []string) EffectCount {
	return CountEffects(f.EffectsByKey(), keys)
}
