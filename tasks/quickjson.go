package tasks

import "unicode/utf8"

// quickCheck is the fast path in front of walkJSON. walkJSON is exact: it finds
// every problem a document has and words it with the field's path. But it is
// slow, because encoding/json's Decoder.Token allocates for every token and
// the walker builds a path for every key and element and a map for every
// object, and nearly every document orgsync reads has no problem at all.
// quickCheck is a plain byte scanner that allocates nothing for such
// documents (unless an object has more than quickLinearKeys keys). It answers
// only "certainly fine" (true) or "not sure" (false): on anything unusual it
// gives up, and checkJSON runs walkJSON, which decides and words the error.
// It may therefore refuse a valid document, which costs only time, but it
// must never accept a document walkJSON refuses; FuzzQuickCheckNeverAcceptsMore
// holds it to that.
//
// It accepts a document only when all of this holds:
//   - it is one JSON value by RFC 8259, with nothing but whitespace after it;
//   - it nests at most quickMaxDepth levels;
//   - every string is valid UTF-8, and no \u escape is of a surrogate (even
//     a valid pair is left to walkJSON, to keep this scanner simple);
//   - no key holds an escape, so that its raw bytes are its decoded text and
//     can be compared as they stand;
//   - no key repeats in its object;
//   - at a struct level (a non-nil shape) every key is exactly one of the
//     struct's fields, and its value is checked against that field's shape.
//
// sh is the shape of the document's top level, as for walkJSON.
func quickCheck(b []byte, sh shape) bool {
	// Both buffers live on the stack: frames never outgrow theirs (the depth
	// is checked first), and keys only does for documents with more than
	// len(keyBuf) keys in the objects open at one time.
	var frameBuf [quickMaxDepth]quickFrame
	var keyBuf [64]quickKey
	frames, keys := frameBuf[:0], keyBuf[:0]
	next := sh // the shape of the value about to be read
	state := quickValue
	i := skipSpace(b, 0)
	for {
		switch state {
		case quickValue: // b[i] should start a value
			if i >= len(b) {
				return false
			}
			switch c := b[i]; {
			case c == '{' || c == '[':
				if len(frames) == quickMaxDepth {
					return false
				}
				closer := byte('}')
				if c == '[' {
					closer = ']'
				}
				i = skipSpace(b, i+1)
				if i < len(b) && b[i] == closer {
					i++
					state = quickAfter
					continue
				}
				frames = append(frames, quickFrame{object: c == '{', sh: next, keys: len(keys)})
				if c == '{' {
					state = quickObjectKey
				} else {
					next = nil // array elements are free-form, as in walkJSON
				}
				continue
			case c == '"':
				end, ok := quickString(b, i+1, false)
				if !ok {
					return false
				}
				i = end
			case c == '-' || ('0' <= c && c <= '9'):
				if i = quickNumber(b, i); i < 0 {
					return false
				}
			case c == 't' && hasLiteral(b, i, "true"):
				i += len("true")
			case c == 'f' && hasLiteral(b, i, "false"):
				i += len("false")
			case c == 'n' && hasLiteral(b, i, "null"):
				i += len("null")
			default:
				return false
			}
			state = quickAfter

		case quickObjectKey: // b[i] should open a key, then ':'
			if i >= len(b) || b[i] != '"' {
				return false
			}
			start := i + 1
			end, ok := quickString(b, start, true)
			if !ok {
				return false
			}
			key := b[start : end-1]
			f := &frames[len(frames)-1]
			if f.seen != nil {
				if _, dup := f.seen[string(key)]; dup {
					return false
				}
				f.seen[string(key)] = struct{}{}
			} else {
				for _, k := range keys[f.keys:] {
					if string(b[k.start:k.end]) == string(key) {
						return false
					}
				}
				if len(keys)-f.keys < quickLinearKeys {
					keys = append(keys, quickKey{start, end - 1})
				} else {
					// A large object: a linear scan per key would make
					// the check quadratic, so its keys move to a map.
					f.seen = make(map[string]struct{}, 2*quickLinearKeys)
					for _, k := range keys[f.keys:] {
						f.seen[string(b[k.start:k.end])] = struct{}{}
					}
					f.seen[string(key)] = struct{}{}
					keys = keys[:f.keys]
				}
			}
			next = nil
			if f.sh != nil {
				v, field := f.sh[string(key)]
				if !field {
					return false // walkJSON words it: unknown, or another case
				}
				next = v
			}
			i = skipSpace(b, end)
			if i >= len(b) || b[i] != ':' {
				return false
			}
			i = skipSpace(b, i+1)
			state = quickValue

		case quickAfter: // a value ended at b[i]
			i = skipSpace(b, i)
			if len(frames) == 0 {
				return i == len(b) // anything after the value is walkJSON's to word
			}
			if i >= len(b) {
				return false
			}
			f := &frames[len(frames)-1]
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
				if f.object {
					state = quickObjectKey
				} else {
					next, state = nil, quickValue
				}
			case '}', ']':
				if (b[i] == '}') != f.object {
					return false
				}
				keys = keys[:f.keys]
				f.seen = nil
				frames = frames[:len(frames)-1]
				i++
			default:
				return false
			}
		}
	}
}

const (
	// quickMaxDepth is how deep quickCheck follows a document; a deeper one
	// is left to walkJSON and its limit (maxJSONDepth).
	quickMaxDepth = 64
	// quickLinearKeys is how many keys of one object quickCheck compares one
	// by one before it moves them to a map.
	quickLinearKeys = 16
)

// quickCheck's states: where the scanner is in the grammar.
const (
	quickValue     = iota // before a value
	quickObjectKey        // before a key in an open object
	quickAfter            // after a value: a separator, a closer or the end
)

// quickFrame is one open object or array in quickCheck.
type quickFrame struct {
	object bool
	sh     shape
	keys   int                 // where this object's keys start in quickCheck's key list
	seen   map[string]struct{} // its keys, once it has more than quickLinearKeys
}

// quickKey is a key of an open object: its raw text is b[start:end].
type quickKey struct{ start, end int }

// quickString scans the rest of a JSON string whose opening quote is just
// before b[i], and returns the index after its closing quote. It fails on
// anything quickCheck leaves to walkJSON: a raw control byte, an invalid or
// surrogate escape, invalid UTF-8, an unclosed string, and, in a key (key
// true), any escape at all.
func quickString(b []byte, i int, key bool) (int, bool) {
	for i < len(b) {
		if quickPlain[b[i]] {
			i++
			continue
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c == '\\':
			if key || i+1 >= len(b) {
				return 0, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r, ok := hex4(b, i+2)
				if !ok || (0xD800 <= r && r <= 0xDFFF) {
					return 0, false
				}
				i += 6
			default:
				return 0, false
			}
		case c < 0x20:
			return 0, false
		default:
			// A continuation byte is never '"' or '\\', so a rune cannot
			// run past the string's end.
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, false
			}
			i += size
		}
	}
	return 0, false
}

// quickPlain marks the bytes that stand for themselves in a JSON string: ASCII
// from the space on, except the quote and the backslash.
var quickPlain = func() (t [256]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// hex4 reads the four hex digits of a \u escape at b[i:i+4].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// quickNumber scans a number starting at b[i] by RFC 8259's grammar,
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, and returns the index after
// it, or -1. What follows the number is for the caller to judge.
func quickNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// skipSpace skips JSON's whitespace, which is only these four bytes.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func hasLiteral(b []byte, i int, lit string) bool {
	return len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit
}
