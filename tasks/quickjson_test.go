package tasks

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A typical NDJSON line, as `enqueue bulk` reads them.
const typicalLine = `{"id":"org-0000123","integrated_account_id":"acct-07","body":{"seq":123,"remote_data":{"n":123,"name":"Acme Corp","tags":["a","b","c"],"tier":"gold"}},"options":{"truto_response_format":"unified"},"idempotency_key":"bench-0000123"}`

// typicalPayload is the task payload of typicalLine.
func typicalPayload(tb testing.TB) []byte {
	tb.Helper()
	u, err := ParseUpdate([]byte(typicalLine))
	if err != nil {
		tb.Fatal(err)
	}
	b, err := EncodePayload(Payload{Update: u, EnqueuedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), MaxRetry: 5, Run: "run-1", OrderSeq: 77, OriginSeq: 70})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// unicodeBody is a body of about 2 KB with text in several scripts.
func unicodeBody() []byte {
	var sb strings.Builder
	sb.WriteString(`{"remote_data":{"name":"Société Générale Zürich GmbH — 東京支店","notes":[`)
	for i := range 15 {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(`{"author":"Zoë Ångström","text":"Réunion prévue à Köln; 会議は来週です 🚀","score":-0.5e+10,"ok":true}`)
	}
	sb.WriteString(`],"address":{"street":"Straße des 17. Juni 135","city":"Berlin","country":"DE","zip":"10623"},"n":12345678901234567890,"empty":null}}`)
	return []byte(sb.String())
}

// manyKeys is an object of n keys k0..k(n-1), then the extra keys given,
// each with the value 1: large enough objects take quickCheck's map path.
func manyKeys(n int, extra ...string) string {
	var sb strings.Builder
	sb.WriteString("{")
	for i := range n {
		fmt.Fprintf(&sb, `"k%d":1,`, i)
	}
	for _, k := range extra {
		fmt.Fprintf(&sb, `%q:1,`, k)
	}
	return strings.TrimSuffix(sb.String(), ",") + "}"
}

func nested(depth int, open, inner, close string) string {
	return strings.Repeat(open, depth) + inner + strings.Repeat(close, depth)
}

// TestQuickCheckAcceptsTypical: the fast path vouches for ordinary valid
// documents, so that checkJSON does not fall back to the walker for them.
// Should one of these ever fail, checkJSON is still right, only slow again.
func TestQuickCheckAcceptsTypical(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
		sh   shape
	}{
		{"line", typicalLine, updateShape},
		{"payload", string(typicalPayload(t)), payloadShape},
		{"line with options", `{"id":"1","integrated_account_id":"a","body":{},"options":{"truto_response_format":"raw","truto_ignore_remote_data":true,"truto_exclude_fields":["a","b"],"remote_query":{"a":{"b":[1,{"c":null}]}}}}`, updateShape},
		{"line with a unicode body", `{"id":"1","integrated_account_id":"a","body":` + string(unicodeBody()) + `}`, updateShape},
		{"unicode body", string(unicodeBody()), nil},
		{"nested", `{"a":[[1,[2,{"b":[{}]}]],{"c":{"d":[]}}],"e":{},"f":[[]]}`, nil},
		{"numbers", `{"n":[-0.5e+10,0,-0,1E-2,123.456,1e400,12345678901234567890,0.0,-1.5E+300,7e0]}`, nil},
		{"ordinary escapes", `{"s":"line\nbreak \"quoted\" caf\u00e9 \\ \/ \b\f\r\t \u0000 \u20AC"}`, nil},
		{"replacement character", `{"s":"\ufffd �"}`, nil},
		{"whitespace", " \t\r\n{ \"a\" : [ 1 , \"x\" , { } ] ,\n\"b\":null } \n", nil},
		{"string", `"x"`, nil},
		{"number", `-1`, updateShape},
		{"array", `[]`, updateShape},
		{"literals", `[true,false,null]`, nil},
		{"empty key", `{"":1}`, nil},
		{"many keys", manyKeys(200), nil},
		{"many keys, nested", `{"a":` + manyKeys(40) + `,"b":[` + manyKeys(17) + `,` + manyKeys(17) + `]}`, nil},
		{"deep arrays", nested(quickMaxDepth, `[`, `1`, `]`), nil},
		{"deep objects", nested(quickMaxDepth, `{"a":`, `1`, `}`), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := walkJSON([]byte(tt.doc), "", "doc", tt.sh); err != nil {
				t.Fatalf("walkJSON refuses the test's document: %v", err)
			}
			if !quickCheck([]byte(tt.doc), tt.sh) {
				t.Errorf("quickCheck(%s) = false, want true", tt.doc)
			}
		})
	}
}

// TestQuickCheckAllocates: the fast path allocates nothing on typical input.
func TestQuickCheckAllocates(t *testing.T) {
	for _, doc := range []struct {
		name string
		b    []byte
		sh   shape
	}{
		{"line", []byte(typicalLine), updateShape},
		{"payload", typicalPayload(t), payloadShape},
		{"body", unicodeBody(), nil},
	} {
		if n := testing.AllocsPerRun(100, func() { quickCheck(doc.b, doc.sh) }); n != 0 {
			t.Errorf("quickCheck on the %s allocates %v times, want 0", doc.name, n)
		}
	}
}

// quickRefused are documents quickCheck leaves to the walker, each with
// whether the walker accepts it (valid: quickCheck merely gives up) or not.
var quickRefused = []struct {
	name  string
	doc   string
	sh    shape
	valid bool
}{
	// Repeated keys, at every level and on both sides of the map switch.
	{"key twice", `{"id":"1","id":"1"}`, updateShape, false},
	{"key twice in body", `{"body":{"a":{"b":[{"c":1,"c":1}]}}}`, updateShape, false},
	{"key twice in remote_query", `{"options":{"remote_query":{"a":1,"b":{},"a":2}}}`, updateShape, false},
	{"key twice in payload", `{"v":2,"run":"a","v":2}`, payloadShape, false},
	{"key twice after a closed object", `{"a":{"b":1},"b":2,"a":3}`, nil, false},
	{"key twice, large object", manyKeys(30, "k3"), nil, false},
	{"key twice, first at the switch", manyKeys(quickLinearKeys+1, "k0"), nil, false},
	{"key twice, both in the map", manyKeys(quickLinearKeys+5, fmt.Sprintf("k%d", quickLinearKeys+2)), nil, false},
	{"key twice, nested in a large object", `{"x":` + manyKeys(20) + `,"y":{"a":1,"a":1}}`, nil, false},
	{"key twice, escaped", `{"id":"1","\u0069d":"1"}`, updateShape, false},
	// Names at struct levels.
	{"case variant", `{"ID":"1"}`, updateShape, false},
	{"unknown field", `{"priority":1}`, updateShape, false},
	{"unknown option", `{"options":{"truto_response_formats":"x"}}`, updateShape, false},
	{"option case variant", `{"options":{"Remote_Query":{}}}`, payloadShape, false},
	{"unknown payload field", `{"v":2,"extra":1}`, payloadShape, false},
	{"escaped field name", `{"i\u0064":"1"}`, updateShape, true},
	{"escaped key", `{"a\nb":1}`, nil, true},
	// Surrogates.
	{"lone high surrogate", `{"a":"\ud800"}`, nil, false},
	{"lone low surrogate", `{"a":"x\udc00"}`, nil, false},
	{"high surrogate then a letter", `{"a":"\ud800\u0041"}`, nil, false},
	{"two high surrogates", `["\uD83D\uD83D"]`, nil, false},
	{"surrogate in a key", `{"\ud800":1}`, nil, false},
	{"surrogate pair", `{"a":"\ud83d\ude00"}`, nil, true},
	// Invalid UTF-8 and control bytes.
	{"invalid byte", "{\"a\":\"\xff\"}", nil, false},
	{"bad continuation", "{\"a\":\"\xc3\x28\"}", nil, false},
	{"overlong", "{\"a\":\"\xc0\x80\"}", nil, false},
	{"encoded surrogate", "{\"a\":\"\xed\xa0\x80\"}", nil, false},
	{"truncated", "{\"a\":\"\xe2\x82\"}", nil, false},
	{"beyond U+10FFFF", "{\"a\":\"\xf4\x90\x80\x80\"}", nil, false},
	{"invalid key", "{\"n\xe9\":1}", nil, false},
	{"invalid field name", "{\"i\xe4\":1}", updateShape, false},
	{"control byte", "{\"a\":\"\x01\"}", nil, false},
	{"raw tab", "{\"a\":\"a\tb\"}", nil, false},
	{"raw newline in key", "{\"a\nb\":1}", nil, false},
	// Escapes.
	{"unknown escape", `{"a":"\x41"}`, nil, false},
	{"short escape", `{"a":"\u12"}`, nil, false},
	{"not hex", `{"a":"\u12G4"}`, nil, false},
	{"capital U", `{"a":"\U0041"}`, nil, false},
	{"backslash at the end", `{"a":"\`, nil, false},
	// Numbers.
	{"leading zero", `[01]`, nil, false},
	{"negative leading zero", `[-01]`, nil, false},
	{"no fraction digits", `[1.]`, nil, false},
	{"no integer digits", `[.5]`, nil, false},
	{"minus alone", `[-]`, nil, false},
	{"no exponent digits", `[1e]`, nil, false},
	{"signed empty exponent", `[1e+]`, nil, false},
	{"plus", `[+1]`, nil, false},
	{"hex", `[0x1]`, nil, false},
	{"fraction without digits, exponent", `[1.e5]`, nil, false},
	{"NaN", `[NaN]`, nil, false},
	{"Infinity", `[-Infinity]`, nil, false},
	{"number then letter", `[1a]`, nil, false},
	// Literals.
	{"short true", `[tru]`, nil, false},
	{"short null", `nul`, nil, false},
	{"capital True", `[True]`, nil, false},
	{"long null", `[nulll]`, nil, false},
	// Structure.
	{"empty", ``, nil, false},
	{"only space", " \n", nil, false},
	{"no colon", `{"a" 1}`, nil, false},
	{"trailing comma in object", `{"a":1,}`, nil, false},
	{"trailing comma in array", `[1,]`, nil, false},
	{"leading comma", `[,1]`, nil, false},
	{"comma alone", `{,}`, nil, false},
	{"no comma", `{"a":1 "b":2}`, nil, false},
	{"no comma in array", `[1 2]`, nil, false},
	{"wrong closer", `{"a":1]`, nil, false},
	{"wrong closer for array", `[1}`, nil, false},
	{"number key", `{1:2}`, nil, false},
	{"unclosed object", `{"a":1`, nil, false},
	{"unclosed array", `[`, nil, false},
	{"unclosed string", `"abc`, nil, false},
	{"closer alone", `}`, nil, false},
	{"single quotes", `{'a':1}`, nil, false},
	// After the value.
	{"second value", `{} {}`, nil, false},
	{"garbage after", `{}x`, nil, false},
	{"comma after", `{},`, nil, false},
	{"two numbers", `1 2`, nil, false},
	{"NUL after", "{}\x00", nil, false},
	{"BOM", "\xef\xbb\xbf{}", nil, false},
	{"no-break space", "\xc2\xa0{}", nil, false},
	{"form feed", "\f{}", nil, false},
	// Depth.
	{"deeper than quickCheck follows", nested(quickMaxDepth+1, `[`, ``, `]`), nil, true},
	{"deeper than quickCheck follows, objects", nested(quickMaxDepth+1, `{"a":`, `1`, `}`), nil, true},
	{"deeper than the walker allows", nested(maxJSONDepth+1, `[`, ``, `]`), nil, false},
}

// TestQuickCheckLeavesToWalker: quickCheck gives up on every kind of document
// the walker refuses (and on a few valid ones it does not bother with).
func TestQuickCheckLeavesToWalker(t *testing.T) {
	t.Parallel()
	for _, tt := range quickRefused {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := walkJSON([]byte(tt.doc), "", "doc", tt.sh)
			if valid := err == nil; valid != tt.valid {
				t.Fatalf("walkJSON error = %v; the test expects valid = %v", err, tt.valid)
			}
			if quickCheck([]byte(tt.doc), tt.sh) {
				t.Errorf("quickCheck(%.200q) = true, want false (walkJSON: %v)", tt.doc, err)
			}
		})
	}
}

// FuzzQuickCheckNeverAcceptsMore: the fast path never accepts a document the
// walker refuses, at a struct level or free-form. (It may refuse one the
// walker accepts: that costs time, not correctness.)
func FuzzQuickCheckNeverAcceptsMore(f *testing.F) {
	payload := typicalPayload(f)
	for _, s := range []string{
		typicalLine, string(payload), string(unicodeBody()),
		`{"id":"1","integrated_account_id":"a","body":{"a":[1,{"b":"caf\u00e9 \"q\" \n"}]},"options":{"remote_query":{"n":-0.5e+10}}}`,
		`{"v":2,"id":"1","integrated_account_id":"a","body":{"a":1},"idempotency_key":"k","enqueued_at":"2026-01-02T03:04:05Z","max_retry":0}`,
		`{"a":"\ud83d\ude00","b":"\ud800","c":"\udc00\ud800"}`,
		`{"body":{"x":{"y":{"z":1,"z":2}}}}`, `{"id":"1","Id":"2"}`, `{"options":{"truto_Exclude_fields":[]}}`,
		`[0,-0,0.0,1e-0,1E+9,-12.5e-3,01,1.,.1,-,1e,+1]`, "{}\n", "{} ", "{}{}", "[] 1",
		"\"\xff\"", "\"\xe2\x82\xac\"", "\"\xed\xa0\x80\"", "\"\x1f\"", "\"\x7f\"",
		manyKeys(quickLinearKeys+1, "k0"), manyKeys(quickLinearKeys + 3),
		nested(quickMaxDepth, `[`, `1`, `]`), nested(quickMaxDepth+1, `{"body":`, `{}`, `}`),
	} {
		f.Add([]byte(s))
	}
	for _, tt := range quickRefused {
		if len(tt.doc) < 1000 {
			f.Add([]byte(tt.doc))
		}
	}
	shapes := []struct {
		name string
		sh   shape
	}{{"an update", updateShape}, {"a payload", payloadShape}, {"free-form", nil}}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The bytes themselves, and the document genJSON builds from them.
		for _, b := range [][]byte{data, genJSON(data)} {
			for _, s := range shapes {
				if !quickCheck(b, s.sh) {
					continue
				}
				if err := walkJSON(b, "", "doc", s.sh); err != nil {
					t.Fatalf("quickCheck accepts %q as %s; walkJSON refuses it: %v", b, s.name, err)
				}
			}
		}
	})
}

// genJSON builds a document from fuzz bytes, out of the pieces quickCheck must
// judge right: the update's and the payload's field names, their case
// variants and escaped spellings, a few short keys (so that keys often
// repeat), strings with every kind of escape, surrogate and bad byte, numbers
// at the grammar's edges, nesting around quickMaxDepth, and now and then
// whitespace JSON does not allow or a stray token. Mutating bytes alone
// seldom turns a valid document into one with a repeated key or a case
// variant; a document built this way often has one, and is mostly valid
// otherwise, so that quickCheck's accepting side is exercised too.
func genJSON(data []byte) []byte {
	g := &jsonGen{data: data}
	sh := []shape{updateShape, payloadShape, nil}[int(g.next())%3]
	g.value(0, sh)
	g.space()
	if g.next() >= 248 {
		g.out = append(g.out, g.pick(genStray, nil)...)
	}
	return g.out
}

// jsonGen is genJSON's state: the bytes left to decide by, and the document.
type jsonGen struct {
	data []byte
	out  []byte
}

// Pieces of generated documents: each pool's first list is valid JSON, its
// second is not, or is what quickCheck must leave to the walker.
var (
	genStringParts = [2][]string{
		{"abc", "Zoë", "会議", "🚀", "\ufffd", `\n`, `\"`, `\\`, `\/`, `\b\f\r\t`, `\u00e9`, `\u0000`, `\uFFFD`, `\ud83d\ude00`, " ", "\x7f", `\ufffd`},
		{`\ud800`, `\udbff`, `\udc00`, `\ud800\u0041`, `\uD800\uD800`, "\xff", "\xc3", "\xc3\x28", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\x80", "\x01", "\t", `\x41`, `\u12G4`, `\U0041`, `\`},
	}
	genKeys = [2][]string{
		{`"a"`, `"b"`, `"c"`, `"A"`, `""`, `"é"`, `"k0"`, `"id"`},
		{`"\u0061"`, `"a\nb"`, "\"\xff\"", `"\ud800"`, `"a`, `a`, `1`},
	}
	genNumbers = [2][]string{
		{"0", "-0", "1", "-12", "0.5", "-0.5e+10", "1E-2", "1e400", "12345678901234567890"},
		{"01", "1.", ".5", "-", "1e", "1e+", "+1", "0x1", "1.e5", "NaN", "-01"},
	}
	genLiterals = [2][]string{{"true", "false", "null"}, {"tru", "nul", "True", "nulll"}}
	genSpaces   = [2][]string{{" ", "\t", "\n", "\r", "  \n\t"}, {"\f", "\xc2\xa0", "\x00", "\xef\xbb\xbf"}}
	genStray    = []string{",", ":", "}", "]", "{", "[", `"`, "x", "{}", "1"}
)

func (g *jsonGen) next() byte {
	if len(g.data) == 0 {
		return 0 // out of bytes: every choice is the first, and the document closes
	}
	c := g.data[0]
	g.data = g.data[1:]
	return c
}

// pick chooses from valid, or one time in 32 from invalid.
func (g *jsonGen) pick(valid, invalid []string) string {
	c := int(g.next())
	if c >= 248 && len(invalid) > 0 {
		return invalid[c%len(invalid)]
	}
	return valid[c%len(valid)]
}

func (g *jsonGen) pool(p [2][]string) string { return g.pick(p[0], p[1]) }

func (g *jsonGen) space() {
	if g.next()%4 == 1 {
		g.out = append(g.out, g.pool(genSpaces)...)
	}
}

// value writes a value of shape sh (used if it is an object).
func (g *jsonGen) value(depth int, sh shape) {
	g.space()
	c := g.next()
	if depth >= 5 {
		c = 4 + c%4 // no deeper, but for the deep case's brackets
	}
	switch c % 10 {
	case 0, 1, 2:
		g.object(depth, sh)
	case 3:
		g.out = append(g.out, '[')
		for i := range int(g.next() % 5) {
			if i > 0 {
				g.space()
				g.out = append(g.out, ',')
			}
			g.value(depth+1, nil)
		}
		g.space()
		g.out = append(g.out, ']')
	case 4, 5:
		g.out = append(g.out, '"')
		for range int(g.next() % 4) {
			g.out = append(g.out, g.pool(genStringParts)...)
		}
		g.out = append(g.out, '"')
	case 6:
		g.out = append(g.out, g.pool(genNumbers)...)
	case 7:
		g.out = append(g.out, g.pool(genLiterals)...)
	case 8:
		// Nesting around quickMaxDepth, as arrays or as objects.
		n := quickMaxDepth - depth - 3 + int(g.next()%6)
		open, inner, closer := "[", "1", "]"
		if g.next()%2 == 0 {
			open, inner, closer = `{"a":`, "{}", "}"
		}
		g.out = append(g.out, nested(n, open, inner, closer)...)
	case 9:
		g.out = append(g.out, g.pick(genStray, nil)...)
	}
}

// object writes an object: at a struct level (sh non-nil) mostly its fields,
// sometimes another case or an escaped spelling of one, or another key.
func (g *jsonGen) object(depth int, sh shape) {
	fields := slices.Sorted(maps.Keys(sh))
	g.out = append(g.out, '{')
	for i := range int(g.next() % 6) {
		if i > 0 {
			g.space()
			g.out = append(g.out, ',')
		}
		g.space()
		var key, name string // as written, and decoded
		switch c := g.next(); {
		case len(fields) == 0 || c >= 240:
			key = g.pool(genKeys)
		case c < 192:
			name = fields[int(g.next())%len(fields)]
			key = strconv.Quote(name)
		case c < 224:
			f := fields[int(g.next())%len(fields)]
			key = strconv.Quote(strings.ToUpper(f[:1]) + f[1:])
		default:
			name = fields[int(g.next())%len(fields)]
			key = fmt.Sprintf(`"\u%04x%s"`, name[0], name[1:])
		}
		g.out = append(g.out, key...)
		g.space()
		g.out = append(g.out, ':')
		g.value(depth+1, sh[name])
	}
	g.space()
	g.out = append(g.out, '}')
}

// BenchmarkCheckJSON measures the strict check of a typical line, of its task
// payload and of a 2 KB body with non-ASCII text: the fast path, and the
// walker it falls back to.
func BenchmarkCheckJSON(b *testing.B) {
	docs := []struct {
		name string
		b    []byte
		sh   shape
	}{
		{"line", []byte(typicalLine), updateShape},
		{"payload", typicalPayload(b), payloadShape},
		{"body", unicodeBody(), nil},
	}
	for _, d := range docs {
		for _, c := range []struct {
			name  string
			check func([]byte, string, string, shape) error
		}{{"check", checkJSON}, {"walk", walkJSON}} {
			b.Run(d.name+"/"+c.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(d.b)))
				for b.Loop() {
					if err := c.check(d.b, "", "doc", d.sh); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
