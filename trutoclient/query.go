package trutoclient

import (
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Options are Truto's query options. The JSON tags are also the "options" object of orgsync's
// update format, so the payload and the query share one definition.
type Options struct {
	// ResponseFormat is "" (Truto's default, unified), unified, raw, normalized or stream.
	ResponseFormat string `json:"truto_response_format,omitempty"`
	// IgnoreRemoteData leaves remote_data out of the response.
	IgnoreRemoteData bool `json:"truto_ignore_remote_data,omitempty"`
	// ExcludeFields are response fields to leave out.
	ExcludeFields []string `json:"truto_exclude_fields,omitempty"`
	// RemoteQuery is passed to the provider untransformed. Values: string, bool, numbers
	// (float64, json.Number, Go integer types), nested map[string]any, and []any of scalars.
	RemoteQuery map[string]any `json:"remote_query,omitempty"`
}

// ResponseFormats are the values ResponseFormat accepts besides "".
var ResponseFormats = []string{"unified", "raw", "normalized", "stream"}

// maxQueryDepth bounds remote_query nesting; it also stops a self-referencing map.
const maxQueryDepth = 32

// Validate reports the first invalid option as a *RequestError naming the field.
func (o Options) Validate() error {
	if o.ResponseFormat != "" && !slices.Contains(ResponseFormats, o.ResponseFormat) {
		return &RequestError{Field: "truto_response_format",
			Reason: fmt.Sprintf("%q is not one of %s", o.ResponseFormat, strings.Join(ResponseFormats, ", "))}
	}
	for i, f := range o.ExcludeFields {
		if f == "" {
			return &RequestError{Field: fmt.Sprintf("truto_exclude_fields[%d]", i), Reason: "is empty"}
		}
	}
	_, err := encodeRemoteQuery(nil, "remote_query", o.RemoteQuery, 0)
	return err
}

// EncodeQuery renders integrated_account_id and the options as Truto documents them: arrays as
// repeated key[]=v, objects as key[k]=v (nested key[a][b]=v), booleans true/false, numbers in plain
// decimal. Keys are sorted at every level so equal inputs give equal strings; brackets and every
// other reserved byte are percent-encoded as url.QueryEscape does.
func EncodeQuery(accountID string, o Options) (string, error) {
	if accountID == "" {
		return "", &RequestError{Field: "integrated_account_id", Reason: "is empty"}
	}
	if err := o.Validate(); err != nil {
		return "", err
	}
	// Top-level names are emitted in sorted order: integrated_account_id, remote_query,
	// truto_exclude_fields, truto_ignore_remote_data, truto_response_format.
	pairs := [][2]string{{"integrated_account_id", accountID}}
	pairs, _ = encodeRemoteQuery(pairs, "remote_query", o.RemoteQuery, 0)
	for _, f := range o.ExcludeFields {
		pairs = append(pairs, [2]string{"truto_exclude_fields[]", f})
	}
	if o.IgnoreRemoteData {
		pairs = append(pairs, [2]string{"truto_ignore_remote_data", "true"})
	}
	if o.ResponseFormat != "" {
		pairs = append(pairs, [2]string{"truto_response_format", o.ResponseFormat})
	}
	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(p[0]))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(p[1]))
	}
	return b.String(), nil
}

// encodeRemoteQuery appends the pairs of one object in sorted key order, recursing into nested
// objects, and validates as it goes.
func encodeRemoteQuery(pairs [][2]string, prefix string, m map[string]any, depth int) ([][2]string, error) {
	if depth > maxQueryDepth {
		return pairs, &RequestError{Field: prefix, Reason: fmt.Sprintf("nests deeper than %d levels", maxQueryDepth)}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		name := prefix + "[" + k + "]"
		if k == "" {
			return pairs, &RequestError{Field: prefix, Reason: "has an empty key"}
		}
		if strings.ContainsAny(k, "[]") {
			// The server splits names on brackets after decoding, so such a key would be misread.
			return pairs, &RequestError{Field: name, Reason: "key contains '[' or ']'"}
		}
		var err error
		switch v := m[k].(type) {
		case map[string]any:
			pairs, err = encodeRemoteQuery(pairs, name, v, depth+1)
		case []any:
			for i, e := range v {
				s, serr := scalarString(e)
				if serr != nil {
					return pairs, &RequestError{Field: fmt.Sprintf("%s[%d]", name, i), Reason: serr.Error()}
				}
				pairs = append(pairs, [2]string{name + "[]", s})
			}
		case []string:
			for _, e := range v {
				pairs = append(pairs, [2]string{name + "[]", e})
			}
		default:
			s, serr := scalarString(v)
			if serr != nil {
				return pairs, &RequestError{Field: name, Reason: serr.Error()}
			}
			pairs = append(pairs, [2]string{name, s})
		}
		if err != nil {
			return pairs, err
		}
	}
	return pairs, nil
}

func scalarString(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return formatFloat(v)
	case float32:
		return formatFloat(float64(v))
	case json.Number:
		return formatNumber(v)
	case int:
		return strconv.FormatInt(int64(v), 10), nil
	case int8:
		return strconv.FormatInt(int64(v), 10), nil
	case int16:
		return strconv.FormatInt(int64(v), 10), nil
	case int32:
		return strconv.FormatInt(int64(v), 10), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case uint:
		return strconv.FormatUint(uint64(v), 10), nil
	case uint8:
		return strconv.FormatUint(uint64(v), 10), nil
	case uint16:
		return strconv.FormatUint(uint64(v), 10), nil
	case uint32:
		return strconv.FormatUint(uint64(v), 10), nil
	case uint64:
		return strconv.FormatUint(v, 10), nil
	case nil:
		return "", fmt.Errorf("null is not supported: use a string, number or boolean")
	default:
		return "", fmt.Errorf("unsupported value type %T: use a string, number, boolean, object or array of those", v)
	}
}

func formatFloat(f float64) (string, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", fmt.Errorf("number %v is not finite", f)
	}
	return strconv.FormatFloat(f, 'f', -1, 64), nil
}

// formatNumber keeps a plain decimal literal as written (no precision lost on big integers) and
// rewrites exponent forms in plain decimal.
func formatNumber(n json.Number) (string, error) {
	s := string(n)
	if !isJSONNumber(s) {
		return "", fmt.Errorf("%q is not a number", s)
	}
	if !strings.ContainsAny(s, "eE") {
		return s, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return "", fmt.Errorf("number %q is out of range", s)
	}
	return formatFloat(f)
}

func isJSONNumber(s string) bool {
	var v json.Number
	// Unmarshal into json.Number checks the JSON number grammar exactly.
	return s != "" && json.Unmarshal([]byte(s), &v) == nil && string(v) == s
}
