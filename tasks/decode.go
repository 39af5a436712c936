package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// This file is orgsync's one input decoder. encoding/json on its own accepts
// input that means something other than it says: field names match
// case-insensitively, a repeated key silently takes the last value, invalid
// UTF-8 and lone surrogate escapes become U+FFFD, and numbers decoded into
// interface values become float64 and lose digits. Every JSON that enters
// orgsync (an NDJSON line, an `enqueue update` body, an Update's Body from Go,
// a task payload) goes through checkJSON, and documents are then decoded with
// UseNumber.

// shape is what one object level of a document may hold. A non-nil shape is
// a Go struct: only its exact field names are allowed, each with the shape of
// its value. A nil shape is free-form data (a body, remote_query), whose keys
// are the caller's own and only must not repeat.
type shape map[string]shape

var (
	updateShape  = shapeOf(reflect.TypeFor[Update]())
	payloadShape = shapeOf(reflect.TypeFor[Payload]())
)

// maxJSONDepth matches encoding/json's own nesting limit.
const maxJSONDepth = 10000

// shapeOf derives the shape of a struct type from its json tags, so that a new
// field cannot be forgotten here.
func shapeOf(t reflect.Type) shape {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[time.Time]() {
		return nil
	}
	s := shape{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || (!f.IsExported() && !f.Anonymous):
			continue
		case f.Anonymous && name == "":
			for k, v := range shapeOf(f.Type) {
				s[k] = v
			}
			continue
		case name == "":
			name = f.Name
		}
		s[name] = shapeOf(f.Type)
	}
	return s
}

// frame is one open object or array while walking a document.
type frame struct {
	object    bool
	sh        shape
	path      string
	keys      map[string]struct{}
	expectKey bool
	valPath   string // path of the value after the key just read
	valShape  shape
	index     int // next array element
}

// checkJSON refuses, as a *ValidationError naming the offending field's path,
// what encoding/json would accept with a meaning other than the text's (see
// walkJSON). walkJSON is exact about every error but slow, and nearly every
// document has none; so quickCheck, a scanner that allocates nothing, first
// vouches for the documents it is certain walkJSON accepts, and walkJSON sees
// only the rest. Every error, and its wording, is walkJSON's.
func checkJSON(b []byte, prefix, rootName string, sh shape) error {
	if quickCheck(b, sh) {
		return nil
	}
	return walkJSON(b, prefix, rootName, sh)
}

// walkJSON walks the JSON document b and refuses, as a *ValidationError
// naming the offending field's path, what encoding/json would accept with a
// meaning other than the text's: invalid UTF-8 or a lone surrogate escape in a
// string, a key repeated in one object, and at struct levels (sh non-nil) any
// name that is not exactly one of the struct's fields. prefix starts every
// path ("" for a whole update); rootName names the document itself in errors
// that belong to no field.
func walkJSON(b []byte, prefix, rootName string, sh shape) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var stack []*frame
	started := false
	for {
		before := dec.InputOffset()
		tok, err := dec.Token()
		if err == io.EOF && started && len(stack) == 0 {
			return nil
		}
		if err != nil {
			return &ValidationError{Field: rootName, Reason: "is not valid JSON: " + jsonReason(err)}
		}
		if started && len(stack) == 0 {
			return &ValidationError{Field: rootName, Reason: "has data after the JSON value"}
		}
		started = true
		raw := b[before:dec.InputOffset()]
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.expectKey {
			if tok == json.Delim('}') {
				stack = stack[:len(stack)-1]
				continue
			}
			key, _ := tok.(string)
			path := join(top.path, key)
			if err := checkString(key, raw, orName(top.path, rootName), "a key"); err != nil {
				return err
			}
			if _, dup := top.keys[key]; dup {
				return &ValidationError{Field: path, Reason: "appears twice in one object; give each field once"}
			}
			top.keys[key] = struct{}{}
			top.valShape = nil
			if top.sh != nil {
				v, ok := top.sh[key]
				if !ok {
					return unknownField(path, key, top.sh)
				}
				top.valShape = v
			}
			top.valPath, top.expectKey = path, false
			continue
		}
		// A value: where it sits decides its path and shape.
		path, vsh := prefix, sh
		switch {
		case top == nil:
		case top.object:
			path, vsh = top.valPath, top.valShape
			top.expectKey = true
		default:
			if tok == json.Delim(']') {
				stack = stack[:len(stack)-1]
				continue
			}
			path, vsh = top.path+"["+strconv.Itoa(top.index)+"]", nil
			top.index++
		}
		switch v := tok.(type) {
		case json.Delim:
			if len(stack) >= maxJSONDepth {
				return &ValidationError{Field: orName(path, rootName), Reason: fmt.Sprintf("nests deeper than %d levels", maxJSONDepth)}
			}
			f := &frame{object: v == '{', sh: vsh, path: path}
			if f.object {
				f.keys, f.expectKey = map[string]struct{}{}, true
			}
			stack = append(stack, f)
		case string:
			if err := checkString(v, raw, orName(path, rootName), "the value"); err != nil {
				return err
			}
		}
	}
}

// checkString refuses a decoded string that encoding/json repaired: its raw
// text (the token, with any separator before it) held invalid UTF-8 or a lone
// surrogate escape, both of which decode to U+FFFD.
func checkString(s string, raw []byte, path, what string) error {
	if !strings.ContainsRune(s, utf8.RuneError) {
		return nil
	}
	if !utf8.Valid(raw) {
		return &ValidationError{Field: path, Reason: what + " is not valid UTF-8"}
	}
	if hasLoneSurrogate(raw) {
		return &ValidationError{Field: path, Reason: what + ` has a \u escape of half a surrogate pair, which is not a character`}
	}
	return nil
}

// hasLoneSurrogate reports whether the raw JSON string text has a \uD800-\uDFFF
// escape that is not a high surrogate followed by a low one.
func hasLoneSurrogate(raw []byte) bool {
	hex := func(i int) rune {
		if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
			return -1
		}
		n, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 16)
		if err != nil {
			return -1
		}
		return rune(n)
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		r := hex(i)
		switch {
		case r < 0:
			i++ // another escape: skip the escaped byte
		case r >= 0xD800 && r < 0xDC00:
			if lo := hex(i + 6); lo < 0xDC00 || lo > 0xDFFF {
				return true
			}
			i += 11
		case r >= 0xDC00 && r <= 0xDFFF:
			return true
		default:
			i += 5
		}
	}
	return false
}

func unknownField(path, key string, sh shape) error {
	for name := range sh {
		if strings.EqualFold(name, key) {
			return &ValidationError{Field: path, Reason: fmt.Sprintf("is not a field: names are case-sensitive; did you mean %q?", name)}
		}
	}
	names := make([]string, 0, len(sh))
	for name := range sh {
		names = append(names, name)
	}
	slices.Sort(names)
	return &ValidationError{Field: path, Reason: "is not a field; the fields here are " + strings.Join(names, ", ")}
}

func orName(path, name string) string {
	if path == "" {
		return name
	}
	return path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decodeStrict checks b with checkJSON, then decodes it into v keeping
// numbers exact (json.Number) and refusing unknown fields.
func decodeStrict(b []byte, rootName string, sh shape, v any) error {
	if err := checkJSON(b, "", rootName, sh); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &ValidationError{Field: rootName, Reason: "not a JSON update object: " + jsonReason(err)}
	}
	return nil
}

// errNotText is why a Go-supplied string option is refused.
var errNotText = errors.New("is not valid UTF-8")

// checkOptionsText refuses invalid UTF-8 in the strings of options built in
// Go (decoded documents were checked by checkJSON already).
func checkOptionsText(exclude []string, rq map[string]any) error {
	for i, f := range exclude {
		if !utf8.ValidString(f) {
			return &ValidationError{Field: fmt.Sprintf("options.truto_exclude_fields[%d]", i), Reason: errNotText.Error()}
		}
	}
	return checkQueryText("options.remote_query", rq, 0)
}

func checkQueryText(path string, m map[string]any, depth int) error {
	if depth > maxJSONDepth {
		return nil // Options.Validate refuses the depth itself
	}
	for k, v := range m {
		p := path + "." + k
		if !utf8.ValidString(k) {
			return &ValidationError{Field: path, Reason: "a key " + errNotText.Error()}
		}
		switch v := v.(type) {
		case string:
			if !utf8.ValidString(v) {
				return &ValidationError{Field: p, Reason: errNotText.Error()}
			}
		case []string:
			for i, s := range v {
				if !utf8.ValidString(s) {
					return &ValidationError{Field: fmt.Sprintf("%s[%d]", p, i), Reason: errNotText.Error()}
				}
			}
		case []any:
			for i, e := range v {
				if s, ok := e.(string); ok && !utf8.ValidString(s) {
					return &ValidationError{Field: fmt.Sprintf("%s[%d]", p, i), Reason: errNotText.Error()}
				}
			}
		case map[string]any:
			if err := checkQueryText(p, v, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}
