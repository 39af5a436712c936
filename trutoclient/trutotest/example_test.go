package trutotest_test

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// A 502 after applying, then a retry with the same key: applied once, answered from the cache.
func Example() {
	s := trutotest.NewServer("token", trutotest.WithFaults(trutotest.Faults{
		AfterApplyRates: map[int]float64{502: 1},
	}))
	defer s.Close()

	send := func() int {
		req, _ := http.NewRequest(http.MethodPatch,
			s.URL+"/unified/user-directory/organizations/org-1?integrated_account_id=acc-1",
			strings.NewReader(`{"remote_data":{"tier":"gold"}}`))
		req.Header.Set("Authorization", "Bearer token")
		req.Header.Set("Idempotency-Key", "update-1")
		resp, err := s.Client().Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	first := send()
	s.UpdateFaults(func(f *trutotest.Faults) { f.AfterApplyRates = nil })
	second := send()

	st := s.Stats()
	fmt.Println(first, second)
	fmt.Println("effects:", st.Effects, "replays:", st.Replays)
	// Output:
	// 502 200
	// effects: 1 replays: 1
}
