// Package when reads the times operators filter by (--since, --until, and
// the admin API's since and until): an RFC3339 time, or a duration ago.
package when

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Parse reads a filter time: an RFC3339 time, or a duration meaning that
// long before now (90m, 2h, 7d). Empty means none (the zero time).
func Parse(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		if n > 100_000 {
			err = errors.New("too far back")
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q: expected an RFC3339 time (2025-01-02T15:04:05Z) or a duration ago (90m, 2h, 7d)", s)
	}
	return now.Add(-d), nil
}
