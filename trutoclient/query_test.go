package trutoclient

import (
	"encoding/json"
	"errors"
	"math"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEncodeQuery(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		account string
		opts    Options
		want    string
	}{
		{"account only", "62f44730-dd91-461e-bd6a-aedd9e0ad79d", Options{},
			"integrated_account_id=62f44730-dd91-461e-bd6a-aedd9e0ad79d"},
		{"account escaped", "a b&c=d/é", Options{}, "integrated_account_id=a+b%26c%3Dd%2F%C3%A9"},
		{"format", "a", Options{ResponseFormat: "normalized"}, "integrated_account_id=a&truto_response_format=normalized"},
		{"ignore remote data", "a", Options{IgnoreRemoteData: true}, "integrated_account_id=a&truto_ignore_remote_data=true"},
		{"exclude fields keep order", "a", Options{ExcludeFields: []string{"name", "id", "a b"}},
			"integrated_account_id=a&truto_exclude_fields%5B%5D=name&truto_exclude_fields%5B%5D=id&truto_exclude_fields%5B%5D=a+b"},
		{"remote query flat, sorted", "a", Options{RemoteQuery: map[string]any{"foo": "bar", "b": "x y", "a": ""}},
			"integrated_account_id=a&remote_query%5Ba%5D=&remote_query%5Bb%5D=x+y&remote_query%5Bfoo%5D=bar"},
		{"remote query nested", "a", Options{RemoteQuery: map[string]any{"a": map[string]any{"c": "2", "b": map[string]any{"d": "1"}}}},
			"integrated_account_id=a&remote_query%5Ba%5D%5Bb%5D%5Bd%5D=1&remote_query%5Ba%5D%5Bc%5D=2"},
		{"remote query arrays", "a", Options{RemoteQuery: map[string]any{"ids": []any{"x", 2.0, true}, "s": []string{"p", "q"}}},
			"integrated_account_id=a&remote_query%5Bids%5D%5B%5D=x&remote_query%5Bids%5D%5B%5D=2&remote_query%5Bids%5D%5B%5D=true" +
				"&remote_query%5Bs%5D%5B%5D=p&remote_query%5Bs%5D%5B%5D=q"},
		{"booleans", "a", Options{RemoteQuery: map[string]any{"t": true, "f": false}},
			"integrated_account_id=a&remote_query%5Bf%5D=false&remote_query%5Bt%5D=true"},
		{"numbers without exponent noise", "a", Options{RemoteQuery: map[string]any{
			"a": 1e21, "b": 0.000001, "c": 2.5, "d": json.Number("12345678901234567890"), "e": json.Number("1.5e3"),
			"f": 42, "g": int64(-7), "h": uint8(9), "i": float32(0.5), "j": json.Number("-0.10"),
		}},
			"integrated_account_id=a&remote_query%5Ba%5D=1000000000000000000000&remote_query%5Bb%5D=0.000001" +
				"&remote_query%5Bc%5D=2.5&remote_query%5Bd%5D=12345678901234567890&remote_query%5Be%5D=1500" +
				"&remote_query%5Bf%5D=42&remote_query%5Bg%5D=-7&remote_query%5Bh%5D=9&remote_query%5Bi%5D=0.5&remote_query%5Bj%5D=-0.10"},
		{"everything", "acc", Options{ResponseFormat: "unified", IgnoreRemoteData: true, ExcludeFields: []string{"licenses"},
			RemoteQuery: map[string]any{"foo": "bar"}},
			"integrated_account_id=acc&remote_query%5Bfoo%5D=bar&truto_exclude_fields%5B%5D=licenses" +
				"&truto_ignore_remote_data=true&truto_response_format=unified"},
		{"reserved bytes in keys and values", "a", Options{RemoteQuery: map[string]any{"k&=#": "v&=#+%"}},
			"integrated_account_id=a&remote_query%5Bk%26%3D%23%5D=v%26%3D%23%2B%25"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := EncodeQuery(tt.account, tt.opts)
			if err != nil {
				t.Fatalf("EncodeQuery: %v", err)
			}
			if got != tt.want {
				t.Errorf("EncodeQuery:\n got %s\nwant %s", got, tt.want)
			}
			for range 5 { // map order must not leak into the output
				if again, _ := EncodeQuery(tt.account, tt.opts); again != got {
					t.Fatalf("EncodeQuery is not deterministic: %s vs %s", again, got)
				}
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	loop := map[string]any{}
	loop["self"] = loop
	tests := []struct {
		name      string
		opts      Options
		wantField string // "" = valid
	}{
		{"zero", Options{}, ""},
		{"every format", Options{ResponseFormat: "stream"}, ""},
		{"unknown format", Options{ResponseFormat: "UNIFIED"}, "truto_response_format"},
		{"empty exclude field", Options{ExcludeFields: []string{"a", ""}}, "truto_exclude_fields[1]"},
		{"empty remote key", Options{RemoteQuery: map[string]any{"": "x"}}, "remote_query"},
		{"empty nested key", Options{RemoteQuery: map[string]any{"a": map[string]any{"": "x"}}}, "remote_query[a]"},
		{"bracket in key", Options{RemoteQuery: map[string]any{"a]b": "x"}}, "remote_query[a]b]"},
		{"null value", Options{RemoteQuery: map[string]any{"a": nil}}, "remote_query[a]"},
		{"struct value", Options{RemoteQuery: map[string]any{"a": struct{}{}}}, "remote_query[a]"},
		{"object in array", Options{RemoteQuery: map[string]any{"a": []any{"x", map[string]any{}}}}, "remote_query[a][1]"},
		{"NaN", Options{RemoteQuery: map[string]any{"n": math.NaN()}}, "remote_query[n]"},
		{"infinity", Options{RemoteQuery: map[string]any{"n": math.Inf(1)}}, "remote_query[n]"},
		{"bad json.Number", Options{RemoteQuery: map[string]any{"n": json.Number("12abc")}}, "remote_query[n]"},
		{"overflowing json.Number", Options{RemoteQuery: map[string]any{"n": json.Number("1e999")}}, "remote_query[n]"},
		{"self-referencing map", Options{RemoteQuery: loop}, "remote_query" + strings.Repeat("[self]", maxQueryDepth+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.opts.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("Validate() = %v, want a *RequestError", err)
			}
			if re.Field != tt.wantField {
				t.Errorf("field = %q, want %q (error: %v)", re.Field, tt.wantField, err)
			}
			if _, qerr := EncodeQuery("acc", tt.opts); qerr == nil {
				t.Errorf("EncodeQuery accepted options that Validate refuses")
			}
		})
	}
}

// TestOptionsJSON: the JSON tags are the "options" object of the update format that producers enqueue.
func TestOptionsJSON(t *testing.T) {
	t.Parallel()
	const in = `{"truto_response_format": "unified", "truto_ignore_remote_data": true,
		"truto_exclude_fields": ["licenses"], "remote_query": {"foo": "bar", "n": 5}}`
	var got Options
	if err := json.Unmarshal([]byte(in), &got); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	want := Options{ResponseFormat: "unified", IgnoreRemoteData: true, ExcludeFields: []string{"licenses"},
		RemoteQuery: map[string]any{"foo": "bar", "n": 5.0}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Options (-want +got):\n%s", diff)
	}
	q, err := EncodeQuery("acc", got)
	if err != nil {
		t.Fatalf("EncodeQuery: %v", err)
	}
	if wantQ := "integrated_account_id=acc&remote_query%5Bfoo%5D=bar&remote_query%5Bn%5D=5&truto_exclude_fields%5B%5D=licenses" +
		"&truto_ignore_remote_data=true&truto_response_format=unified"; q != wantQ {
		t.Errorf("EncodeQuery:\n got %s\nwant %s", q, wantQ)
	}
}

func FuzzEncodeQuery(f *testing.F) {
	f.Add("acc", "", false, "", "", "foo", "bar", "", 0.0)
	f.Add("62f44730-dd91-461e-bd6a-aedd9e0ad79d", "unified", true, "licenses", "name", "a", "b c", "nested", 1e21)
	f.Add("a&b=c;d", "raw", false, "x[]", "%", "k]", "v", "[", math.Inf(1))
	f.Add("", "stream", true, "", "y", "", "", "", math.Copysign(0, -1))
	f.Add("\x00\xff", "bogus", false, "\n", "é", "ü", "\xff", "z", 5e-324)
	f.Fuzz(func(t *testing.T, account, format string, ignore bool, ex1, ex2, key, val, nestedKey string, num float64) {
		o := Options{ResponseFormat: format, IgnoreRemoteData: ignore}
		for _, e := range []string{ex1, ex2} {
			if e != "" {
				o.ExcludeFields = append(o.ExcludeFields, e)
			}
		}
		if key != "" {
			o.RemoteQuery = map[string]any{key: val, key + "n": num}
			if nestedKey != "" {
				o.RemoteQuery[key+"o"] = map[string]any{nestedKey: []any{val, num, true}}
			}
		}
		q, err := EncodeQuery(account, o)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a *RequestError", err)
			}
			return
		}
		if account == "" {
			t.Fatalf("EncodeQuery accepted an empty account")
		}
		vals, err := url.ParseQuery(q)
		if err != nil {
			t.Fatalf("ParseQuery(%q): %v", q, err)
		}
		if got := vals["integrated_account_id"]; len(got) != 1 || got[0] != account {
			t.Fatalf("integrated_account_id round-trips as %q, want %q", got, account)
		}
		if got := vals["truto_exclude_fields[]"]; !cmp.Equal(got, o.ExcludeFields, cmp.Comparer(func(a, b []string) bool {
			return strings.Join(a, "\x00") == strings.Join(b, "\x00")
		})) {
			t.Fatalf("truto_exclude_fields[] = %q, want %q", got, o.ExcludeFields)
		}
		if key != "" {
			if got := vals.Get("remote_query[" + key + "]"); got != val {
				t.Fatalf("remote_query[%s] = %q, want %q", key, got, val)
			}
		}
	})
}
