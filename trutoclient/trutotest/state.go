package trutotest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"time"
)

// orgKey names one organization of one integrated account.
type orgKey struct{ account, id string }

// org is one organization's current record and every body applied to it, in order.
type org struct {
	fields  map[string]any
	applied []json.RawMessage
	keys    []string
}

// unifiedFields are the Organization object's fields, in the unified answer.
var unifiedFields = []string{"id", "name", "pricing_plan", "licenses", "created_at", "updated_at", "remote_data"}

// applyLocked merges patch into the organization (creating it on first use) and logs the
// body; it returns the updated record.
func (f *Fake) applyLocked(now time.Time, account, id string, patch map[string]any, body []byte, key string) map[string]any {
	k := orgKey{account, id}
	o := f.orgs[k]
	stamp := now.UTC().Format(time.RFC3339Nano)
	if o == nil {
		o = &org{fields: map[string]any{"created_at": stamp}}
		f.orgs[k] = o
	}
	merge(o.fields, patch)
	o.fields["id"] = id
	o.fields["updated_at"] = stamp
	o.applied = append(o.applied, json.RawMessage(bytes.Clone(body)))
	o.keys = append(o.keys, key)
	return o.fields
}

// merge deep-merges src into dst: objects merge recursively, anything else replaces.
func merge(dst, src map[string]any) {
	for k, v := range src {
		if sv, ok := v.(map[string]any); ok {
			if dv, ok := dst[k].(map[string]any); ok {
				merge(dv, sv)
				continue
			}
			v = clone(sv)
		}
		dst[k] = clone(v)
	}
}

// clone deep-copies a decoded JSON value, so stored records never alias a caller's.
func clone(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = clone(x)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, x := range v {
			s[i] = clone(x)
		}
		return s
	default:
		return v
	}
}

// render builds the answer for an organization record, as Truto shapes it for opts.
func render(fields map[string]any, opts respOptions) answer {
	var out any
	switch opts.format {
	case "raw", "stream":
		// The provider's own record, untouched by unification.
		out = fields["remote_data"]
		if out == nil {
			out = map[string]any{}
		}
	default:
		m := map[string]any{}
		for _, k := range unifiedFields {
			if v, ok := fields[k]; ok {
				m[k] = v
			}
		}
		if opts.ignoreRemote {
			delete(m, "remote_data")
		}
		out = m
	}
	if m, ok := out.(map[string]any); ok && len(opts.exclude) > 0 {
		m = clone(m).(map[string]any)
		for _, k := range opts.exclude {
			delete(m, k)
		}
		out = m
	}
	a := jsonAnswer(http.StatusOK, out)
	if opts.format == "stream" && a.status == http.StatusOK {
		a.header.Set("Content-Type", "application/octet-stream")
	}
	return a
}

// Organization returns a copy of the stored organization as encoding/json decodes it
// (numbers as float64).
func (f *Fake) Organization(account, id string) (map[string]any, bool) {
	f.mu.Lock()
	o := f.orgs[orgKey{account, id}]
	var b []byte
	var err error
	if o != nil {
		b, err = json.Marshal(o.fields)
	}
	f.mu.Unlock()
	if o == nil {
		return nil, false
	}
	var m map[string]any
	if err != nil || json.Unmarshal(b, &m) != nil {
		return nil, false // unreachable: the record came from decoded JSON
	}
	return m, true
}

// SetOrganization stores org as the organization's record (not counted as an effect), so
// tests can start from a known provider state.
func (f *Fake) SetOrganization(account, id string, record map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := orgKey{account, id}
	fields := clone(record).(map[string]any)
	fields["id"] = id
	if o := f.orgs[k]; o != nil {
		o.fields = fields
		return
	}
	f.orgs[k] = &org{fields: fields}
}

// Applied returns the bodies applied to the organization, in order.
func (f *Fake) Applied(account, id string) []json.RawMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.orgs[orgKey{account, id}]
	if o == nil {
		return nil
	}
	out := make([]json.RawMessage, len(o.applied))
	for i, b := range o.applied {
		out[i] = bytes.Clone(b)
	}
	return out
}

// AppliedKeys returns the idempotency keys of the organization's effects, in order ("" for
// an unkeyed PATCH).
func (f *Fake) AppliedKeys(account, id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o := f.orgs[orgKey{account, id}]; o != nil {
		return slices.Clone(o.keys)
	}
	return nil
}

// OutOfOrder counts, over every organization, the applied bodies whose numeric top-level
// field is lower than that of a body applied earlier to the same organization. Bodies
// without a numeric field are skipped. Tests number their updates ({"seq": n, ...}).
func (f *Fake) OutOfOrder(field string) int {
	f.mu.Lock()
	lists := make([][]json.RawMessage, 0, len(f.orgs))
	for _, o := range f.orgs {
		lists = append(lists, o.applied) // append-only, so reading outside the lock is safe
	}
	f.mu.Unlock()
	n := 0
	for _, bodies := range lists {
		seen, highest := false, 0.0
		for _, b := range bodies {
			v, ok := numberField(b, field)
			if !ok {
				continue
			}
			if seen && v < highest {
				n++
			}
			if !seen || v > highest {
				seen, highest = true, v
			}
		}
	}
	return n
}

// numberField reads a numeric top-level field of a JSON object.
func numberField(b []byte, field string) (float64, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return 0, false
	}
	var v float64
	if raw, ok := m[field]; !ok || json.Unmarshal(raw, &v) != nil {
		return 0, false
	}
	return v, true
}
