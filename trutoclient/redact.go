package trutoclient

import (
	"bytes"
	"slices"
	"strings"
)

// redactedText replaces every occurrence of the secret.
const redactedText = "[redacted]"

// maxDecodeDepth is how many layers of escaping redaction looks through: a JSON string (1) that
// holds the provider's own JSON body (2) that quotes another JSON document (3) that holds a
// percent-encoded URL (4). A layer is decoded only when the one before it held an escape, so
// ordinary bodies cost one or two passes.
const maxDecodeDepth = 4

// minPartialSecret is how many leading characters of the secret at the very end of a truncated
// body are redacted as a cut-off occurrence; fewer say nothing worth hiding.
const minPartialSecret = 4

// escapeIntroducers are the bytes that can start an escape sequence the decoder understands.
const escapeIntroducers = `\%&`

// redactor hides one secret (the API token) in everything that comes back from upstream. It is
// the single redaction of the client: response bodies, headers, parsed error fields and
// transport errors all go through it.
//
// An upstream that echoes the token may escape it on the way: JSON (\u0074, \/), percent-encoding
// (%2F), HTML character references (&#116;), or several of these nested, as when a provider's
// JSON error sits inside Truto's raw_response string. So the redactor matches the secret in the
// raw bytes and in each of up to maxDecodeDepth successive decodings of them, and replaces the
// raw bytes that decode to the secret. Matching is case-sensitive: the token with its case changed
// is not the token (hex digits inside escapes are read in either case).
type redactor struct {
	// atDepth[d] are the strings to find after d decodings: the secret and, when the secret
	// contains escape introducers itself, what decoding turns it into (an occurrence escaped
	// e ≤ d times reads as the secret decoded d-e times).
	atDepth [maxDecodeDepth + 1][]pattern
}

// pattern is one string to find, with its Knuth-Morris-Pratt failure table.
type pattern struct {
	s    string
	fail []int
}

func newPattern(s string) pattern {
	fail := make([]int, len(s))
	for i, k := 1, 0; i < len(s); i++ {
		for k > 0 && s[i] != s[k] {
			k = fail[k-1]
		}
		if s[i] == s[k] {
			k++
		}
		fail[i] = k
	}
	return pattern{s: s, fail: fail}
}

func newRedactor(secret string) *redactor {
	r := &redactor{}
	var all []pattern
	cur := secret
	for d := range r.atDepth {
		if d > 0 {
			cur = string(decodeAll([]byte(cur)))
		}
		if !slices.ContainsFunc(all, func(p pattern) bool { return p.s == cur }) {
			all = append(all, newPattern(cur))
		}
		r.atDepth[d] = slices.Clip(all)
	}
	return r
}

// decodeAll applies one layer of lenient decoding to b.
func decodeAll(b []byte) []byte {
	d := &decodeStream{src: &rawStream{b: b}}
	var out []byte
	for u, ok := d.next(); ok; u, ok = d.next() {
		out = append(out, u.c)
	}
	return out
}

// String redacts s.
func (r *redactor) String(s string) string {
	if r == nil || s == "" {
		return s
	}
	if b := r.redact([]byte(s), false); b != nil {
		return string(b)
	}
	return s
}

// Bytes redacts b, returning b itself when there was nothing to hide. When truncated, b was cut
// off and a trailing start of the secret (at least minPartialSecret characters) is hidden too.
func (r *redactor) Bytes(b []byte, truncated bool) []byte {
	if r == nil || len(b) == 0 {
		return b
	}
	if out := r.redact(b, truncated); out != nil {
		return out
	}
	return b
}

// redact returns a redacted copy of b, or nil when b holds no occurrence.
func (r *redactor) redact(b []byte, truncated bool) []byte {
	var found []span
	depth := 0
	if bytes.ContainsAny(b, escapeIntroducers) {
		depth = maxDecodeDepth
	}
	found = r.matchRaw(b, truncated, found)
	for d := 1; d <= depth; d++ {
		var s stream = &rawStream{b: b}
		var top *decodeStream
		for range d {
			top = &decodeStream{src: s}
			s = top
		}
		found = r.match(s, d, truncated, found)
		if top != nil && !top.decoded {
			break // this layer decoded nothing, so deeper layers read the same as this one
		}
	}
	if len(found) == 0 {
		return nil
	}
	return replaceSpans(b, found)
}

// span is a range [start, end) of raw bytes to hide.
type span struct{ start, end int }

// matchRaw finds the secret in the undecoded bytes, the common case, without the decoding
// machinery.
func (r *redactor) matchRaw(b []byte, truncated bool, found []span) []span {
	secret := r.atDepth[0][0].s
	for at := 0; ; {
		i := bytes.Index(b[at:], []byte(secret))
		if i < 0 {
			break
		}
		found = append(found, span{at + i, at + i + len(secret)})
		at += i + 1
	}
	if truncated {
		for k := len(secret) - 1; k >= minPartialSecret; k-- {
			if bytes.HasSuffix(b, []byte(secret[:k])) {
				found = append(found, span{len(b) - k, len(b)})
				break
			}
		}
	}
	return found
}

// match finds the patterns that can appear at decoding depth d in s, appending the raw spans of
// their occurrences to found.
func (r *redactor) match(s stream, d int, truncated bool, found []span) []span {
	pats := r.atDepth[d]
	states := make([]int, len(pats))
	longest := 0
	for _, p := range pats {
		longest = max(longest, len(p.s))
	}
	// starts remembers the raw start of the last longest units, to map a match back to raw bytes.
	starts := make([]int, longest)
	n, end := 0, 0
	for u, ok := s.next(); ok; u, ok = s.next() {
		starts[n%longest] = u.start
		n++
		end = u.end
		for i, p := range pats {
			k := states[i]
			for k > 0 && (k == len(p.s) || u.c != p.s[k]) {
				k = p.fail[k-1]
			}
			if u.c == p.s[k] {
				k++
			}
			states[i] = k
			if k == len(p.s) {
				found = append(found, span{starts[(n-k)%longest], u.end})
			}
		}
	}
	if truncated {
		for i, p := range pats {
			if k := states[i]; k >= minPartialSecret && k < len(p.s) {
				found = append(found, span{starts[(n-k)%longest], end})
			}
		}
	}
	return found
}

// replaceSpans returns a copy of b with each span, merged with those it overlaps, replaced by
// redactedText.
func replaceSpans(b []byte, spans []span) []byte {
	slices.SortFunc(spans, func(x, y span) int { return x.start - y.start })
	out := make([]byte, 0, len(b)+len(redactedText))
	at := 0
	for i := 0; i < len(spans); {
		start, end := spans[i].start, spans[i].end
		for i++; i < len(spans) && spans[i].start < end; i++ {
			end = max(end, spans[i].end)
		}
		out = append(out, b[at:start]...)
		out = append(out, redactedText...)
		at = end
	}
	return append(out, b[at:]...)
}

// unit is one character of a decoded stream and the raw bytes [start, end) it came from.
type unit struct {
	c          byte
	start, end int
}

// stream yields the characters of one decoding layer, in order.
type stream interface {
	next() (unit, bool)
}

// rawStream is the undecoded bytes.
type rawStream struct {
	b []byte
	i int
}

func (s *rawStream) next() (unit, bool) {
	if s.i >= len(s.b) {
		return unit{}, false
	}
	s.i++
	return unit{c: s.b[s.i-1], start: s.i - 1, end: s.i}, true
}

// nonASCII stands for a decoded character outside ASCII, which the token (printable ASCII) never
// contains.
const nonASCII = 0x80

// decodeStream decodes one layer of escaping from src, leniently: JSON and Go/JavaScript escapes
// (\" \\ \/ \' \b \f \n \r \t \uXXXX \xXX), percent-encoding (%XX) and HTML character references
// (&#N; &#xH; &amp; &lt; &gt; &quot; &apos; &sol;). Anything else, including a broken escape,
// passes through as it is.
type decodeStream struct {
	src     stream
	ahead   []unit // read from src but not yet consumed
	decoded bool   // an escape was decoded
}

func (d *decodeStream) peek(k int) (unit, bool) {
	for len(d.ahead) <= k {
		u, ok := d.src.next()
		if !ok {
			return unit{}, false
		}
		d.ahead = append(d.ahead, u)
	}
	return d.ahead[k], true
}

func (d *decodeStream) next() (unit, bool) {
	u, ok := d.peek(0)
	if !ok {
		return unit{}, false
	}
	n := 1
	if c, k := d.escape(u.c); k > 0 {
		u.c, u.end, n = c, d.ahead[k-1].end, k
		d.decoded = true
	}
	d.ahead = d.ahead[:copy(d.ahead, d.ahead[n:])]
	return u, true
}

// escape reports the character an escape sequence at the head of the lookahead stands for and
// its length in units, or a length of 0 when there is none.
func (d *decodeStream) escape(intro byte) (byte, int) {
	switch intro {
	case '\\':
		u, ok := d.peek(1)
		if !ok {
			return 0, 0
		}
		switch u.c {
		case '"', '\\', '/', '\'':
			return u.c, 2
		case 'b':
			return '\b', 2
		case 'f':
			return '\f', 2
		case 'n':
			return '\n', 2
		case 'r':
			return '\r', 2
		case 't':
			return '\t', 2
		case 'u':
			if v, ok := d.hex(2, 4); ok {
				return asciiOr(v), 6
			}
		case 'x':
			if v, ok := d.hex(2, 2); ok {
				return asciiOr(v), 4
			}
		}
	case '%':
		if v, ok := d.hex(1, 2); ok {
			return byte(v), 3
		}
	case '&':
		return d.entity()
	}
	return 0, 0
}

// hex reads n hex digits starting at lookahead position from.
func (d *decodeStream) hex(from, n int) (int, bool) {
	v := 0
	for i := from; i < from+n; i++ {
		u, ok := d.peek(i)
		if !ok {
			return 0, false
		}
		h, ok := hexValue(u.c)
		if !ok {
			return 0, false
		}
		v = v<<4 | h
	}
	return v, true
}

// maxEntityLen bounds an HTML character reference, "&#x0000007e;" at most.
const maxEntityLen = 12

var namedEntities = map[string]byte{"amp": '&', "lt": '<', "gt": '>', "quot": '"', "apos": '\'', "sol": '/'}

// entity reads an HTML character reference at the head of the lookahead.
func (d *decodeStream) entity() (byte, int) {
	var name [maxEntityLen]byte
	for i := 1; i < maxEntityLen; i++ {
		u, ok := d.peek(i)
		if !ok {
			return 0, 0
		}
		c := u.c
		switch {
		case c == ';' && i > 1:
			ref := string(name[1:i])
			if c, ok := namedEntities[ref]; ok {
				return c, i + 1
			}
			if v, ok := numericReference(ref); ok {
				return asciiOr(v), i + 1
			}
			return 0, 0
		case c == '#' && i == 1, 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			name[i] = c
		default:
			return 0, 0 // not a reference: stop looking ahead at once
		}
	}
	return 0, 0
}

// numericReference reads "#116" or "#x74" (the part of &#116; between & and ;).
func numericReference(ref string) (int, bool) {
	digits, base := strings.TrimPrefix(ref, "#"), 10
	if len(digits) == len(ref) || digits == "" {
		return 0, false
	}
	if digits[0] == 'x' || digits[0] == 'X' {
		digits, base = digits[1:], 16
	}
	if digits == "" {
		return 0, false
	}
	v := 0
	for i := 0; i < len(digits); i++ {
		h, ok := hexValue(digits[i])
		if !ok || h >= base {
			return 0, false
		}
		v = min(v*base+h, 0x10ffff+1)
	}
	return v, true
}

func hexValue(c byte) (int, bool) {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0'), true
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10, true
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10, true
	}
	return 0, false
}

func asciiOr(v int) byte {
	if v < 0x80 {
		return byte(v)
	}
	return nonASCII
}
