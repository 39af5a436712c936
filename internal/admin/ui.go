package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
)

// UIRoot is where the queue UI is mounted.
const UIRoot = "/ui"

// maxShown bounds a payload or result as the queue UI shows it: a list page
// shows up to 100 tasks, and a body may be 1 MiB.
const maxShown = 64 << 10

// NewUI returns the asynq queue UI (asynqmon) for the Redis at conn, mounted
// under /ui/, read-only unless writable. It opens its own Redis connections:
// Close it when the endpoint stops.
func NewUI(conn asynq.RedisConnOpt, writable bool) (*asynqmon.HTTPHandler, error) {
	if conn == nil {
		return nil, fmt.Errorf("queue UI: no Redis connection options")
	}
	return asynqmon.New(asynqmon.Options{
		RootPath:         UIRoot,
		RedisConnOpt:     conn,
		ReadOnly:         !writable,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(FormatJSON),
		ResultFormatter:  asynqmon.ResultFormatterFunc(FormatJSON),
	}), nil
}

// FormatJSON renders a task payload or result for the queue UI: JSON
// indented (ours always is JSON: the versioned payload, the stored result),
// other printable text as it is, anything else as a byte count. The text is
// cut at 64 KiB; `enqueue status` shows the whole of it.
func FormatJSON(_ string, b []byte) string {
	var buf bytes.Buffer
	if json.Valid(b) && json.Indent(&buf, b, "", "  ") == nil {
		b = buf.Bytes()
	} else if !printable(b) {
		return fmt.Sprintf("(%d bytes, not text)", len(b))
	}
	if len(b) <= maxShown {
		return string(b)
	}
	cut := maxShown
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return fmt.Sprintf("%s\n… (%d more bytes; `enqueue status TASK_ID` shows all)", b[:cut], len(b)-cut)
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}
