package trutotest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

const maxControlBody = 1 << 20

// serveControl serves the control API under /_fake/: JSON in and out, no authentication,
// so scripts and the demo can drive a standalone fake.
func (f *Fake) serveControl(w http.ResponseWriter, r *http.Request, path string) {
	q := r.URL.Query()
	switch path {
	case "/_fake/faults":
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, f.Faults())
		case http.MethodPut:
			body, ok := readControlBody(w, r)
			if !ok {
				return
			}
			x := DefaultFaults()
			if err := decodeStrict(body, &x); err != nil {
				controlError(w, http.StatusBadRequest, err)
				return
			}
			if err := x.Validate(); err != nil {
				controlError(w, http.StatusBadRequest, err)
				return
			}
			f.SetFaults(x)
			writeJSON(w, http.StatusOK, f.Faults())
		case http.MethodPatch:
			body, ok := readControlBody(w, r)
			if !ok {
				return
			}
			if err := f.updateFaults(func(x *Faults) error { return patchFaults(x, body) }); err != nil {
				controlError(w, http.StatusBadRequest, err)
				return
			}
			writeJSON(w, http.StatusOK, f.Faults())
		default:
			notAllowed(w, "GET, PUT, PATCH")
		}
	case "/_fake/outage":
		switch r.Method {
		case http.MethodPost:
			body, ok := readControlBody(w, r)
			if !ok {
				return
			}
			var req struct {
				Mode     string   `json:"mode"`
				Duration Duration `json:"duration"`
			}
			if err := decodeStrict(body, &req); err != nil {
				controlError(w, http.StatusBadRequest, err)
				return
			}
			if err := (Faults{Outage: Outage{Mode: req.Mode}}).Validate(); err != nil || req.Mode == "" {
				controlError(w, http.StatusBadRequest, fmt.Errorf("mode %q: want \"503\", \"reset\" or \"hang\"", req.Mode))
				return
			}
			f.StartOutage(req.Mode, time.Duration(req.Duration))
			writeJSON(w, http.StatusOK, f.Faults().Outage)
		case http.MethodDelete:
			f.EndOutage()
			writeJSON(w, http.StatusOK, f.Faults().Outage)
		default:
			notAllowed(w, "POST, DELETE")
		}
	case "/_fake/reset":
		if r.Method != http.MethodPost {
			notAllowed(w, "POST")
			return
		}
		f.Reset()
		writeJSON(w, http.StatusOK, f.Stats())
	default:
		read, ok := controlReads[path]
		if !ok {
			controlError(w, http.StatusNotFound, fmt.Errorf("no control endpoint %s", path))
			return
		}
		if r.Method != http.MethodGet {
			notAllowed(w, "GET")
			return
		}
		v, err := read(f, q)
		if err != nil {
			controlError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// controlReads are the read-only control endpoints, each a thin view of a Fake method.
var controlReads = map[string]func(*Fake, map[string][]string) (any, error){
	"/_fake/stats": func(f *Fake, _ map[string][]string) (any, error) { return f.Stats(), nil },
	"/_fake/requests": func(f *Fake, q map[string][]string) (any, error) {
		reqs := f.Requests()
		if v := first(q, "limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("limit %q: want a whole number >= 0", v)
			}
			reqs = reqs[max(len(reqs)-n, 0):]
		}
		return reqs, nil
	},
	"/_fake/applied": func(f *Fake, q map[string][]string) (any, error) {
		account, id := first(q, "account"), first(q, "id")
		if account == "" || id == "" {
			return nil, errors.New("account and id are required")
		}
		rec, _ := f.Organization(account, id)
		return struct {
			Organization map[string]any    `json:"organization"`
			Bodies       []json.RawMessage `json:"bodies"`
			Keys         []string          `json:"keys"`
		}{rec, f.Applied(account, id), f.AppliedKeys(account, id)}, nil
	},
	"/_fake/keys": func(f *Fake, q map[string][]string) (any, error) {
		if k := first(q, "key"); k != "" {
			return f.Key(k), nil
		}
		return f.EffectsByKey(), nil
	},
	"/_fake/out-of-order": func(f *Fake, q map[string][]string) (any, error) {
		field := first(q, "field")
		if field == "" {
			field = "seq"
		}
		return map[string]int{"out_of_order": f.OutOfOrder(field)}, nil
	},
	"/_fake/admitted": func(f *Fake, q map[string][]string) (any, error) {
		account := first(q, "account")
		if account == "" {
			return nil, errors.New("account is required")
		}
		return map[string]int{"admitted_per_window": f.AdmittedPerWindow(account)}, nil
	},
}

func first(q map[string][]string, k string) string {
	if vs := q[k]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// patchFaults overwrites only the top-level fields present in body; a given map replaces
// the old one rather than merging into it.
func patchFaults(x *Faults, body []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return fmt.Errorf("faults: want a JSON object: %w", err)
	}
	for name, m := range map[string]func(){
		"error_rates":       func() { x.ErrorRates = nil },
		"after_apply_rates": func() { x.AfterApplyRates = nil },
		"account_status":    func() { x.AccountStatus = nil },
		"org_status":        func() { x.OrgStatus = nil },
		"outage":            func() { x.Outage = Outage{} },
		"account_limit":     func() { x.AccountLimit = Limit{} },
		"token_limit":       func() { x.TokenLimit = Limit{} },
	} {
		if _, ok := fields[name]; ok {
			m()
		}
	}
	if err := decodeStrict(body, x); err != nil {
		return err
	}
	return x.Validate()
}

// decodeStrict decodes one JSON value, refusing unknown fields so a typo is not ignored.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

func readControlBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxControlBody))
	if err != nil {
		controlError(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
		return nil, false
	}
	return b, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"fake: cannot encode the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func controlError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func notAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	controlError(w, http.StatusMethodNotAllowed, errors.New("method not allowed; allowed: "+allow))
}
