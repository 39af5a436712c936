package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/orgsync/orgsync/trutoclient"
)

// Limits of an update. The name limits are
// trutoclient's, so that the door and the client refuse the same names.
const (
	MaxIDBytes      = trutoclient.MaxIDBytes  // organization id and integrated account id
	MaxBodyBytes    = 1 << 20                 // the JSON body
	MaxKeyBytes     = trutoclient.MaxKeyBytes // idempotency key
	maxErrorDisplay = 80                      // bytes of an offending value quoted in an error
)

// Update is one intent: apply Body to organization ID of integrated account
// IntegratedAccountID, with Truto's query Options. Its JSON form is the NDJSON
// line format of `enqueue bulk` and the heart of the queue payload.
type Update struct {
	ID                  string              `json:"id"`
	IntegratedAccountID string              `json:"integrated_account_id"`
	Body                json.RawMessage     `json:"body"`
	Options             trutoclient.Options `json:"options,omitzero"`
	IdempotencyKey      string              `json:"idempotency_key,omitempty"`
}

// ValidationError says which field of an update is invalid and why.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Reason }

// Validate reports the first problem with u as a *ValidationError, or nil.
// An empty IdempotencyKey is valid: the producer generates one. The rules for
// the id, the account id and the key are trutoclient's (what the client would
// refuse at send is refused here), plus orgsync's reserved account names.
func (u *Update) Validate() error { return u.validate(false) }

// validate is Validate. bodyWalked says that checkJSON has already walked the
// body's bytes (ParseUpdate and DecodePayload walk the whole document, body
// included), so that only the body's cheap checks are left to do: walking it
// again costs more than the rest of the update's checks together.
func (u *Update) validate(bodyWalked bool) error {
	if err := fromRequestError(trutoclient.ValidateOrganizationID(u.ID)); err != nil {
		return err
	}
	if err := ValidateAccount(u.IntegratedAccountID); err != nil {
		return err
	}
	if err := validateBody(u.Body, bodyWalked); err != nil {
		return err
	}
	if err := u.Options.Validate(); err != nil {
		return &ValidationError{Field: "options", Reason: err.Error()}
	}
	if err := checkOptionsText(u.Options.ExcludeFields, u.Options.RemoteQuery); err != nil {
		return err
	}
	if u.IdempotencyKey != "" {
		if err := ValidateKey(u.IdempotencyKey); err != nil {
			return err
		}
	}
	return nil
}

// ValidateAccount checks an integrated account id: trutoclient's rules, and
// not a name orgsync reserves for itself (AllAccounts, the hold on everyone).
func ValidateAccount(account string) error {
	if err := fromRequestError(trutoclient.ValidateAccountID(account)); err != nil {
		return err
	}
	if account == AllAccounts {
		return &ValidationError{Field: "integrated_account_id", Reason: fmt.Sprintf("%q is reserved (it names all accounts in `enqueue accounts resume`)", account)}
	}
	return nil
}

// fromRequestError turns trutoclient's *RequestError into a *ValidationError
// for the same field.
func fromRequestError(err error) error {
	var re *trutoclient.RequestError
	if errors.As(err, &re) {
		return &ValidationError{Field: re.Field, Reason: re.Reason}
	}
	return err
}

// validateBody checks the body's presence, size and kind, then (unless
// walked says checkJSON walked it already) its JSON.
func validateBody(b json.RawMessage, walked bool) error {
	// JSON's own whitespace only: bytes.TrimSpace would also take Unicode
	// spaces, which are not JSON, and leave json.Marshal to refuse them later.
	trimmed := bytes.Trim(b, " \t\r\n")
	switch {
	case len(trimmed) == 0:
		return &ValidationError{Field: "body", Reason: "is required (a JSON object, e.g. {\"remote_data\": {...}})"}
	case len(b) > MaxBodyBytes:
		return &ValidationError{Field: "body", Reason: fmt.Sprintf("is %d bytes; at most %d allowed", len(b), MaxBodyBytes)}
	case trimmed[0] != '{':
		return &ValidationError{Field: "body", Reason: "must be a JSON object"}
	case walked:
		return nil
	}
	return checkJSON(trimmed, "body", "body", nil)
}

// ValidateKey checks an idempotency key: 1..255 bytes of printable ASCII
// without leading or trailing spaces (trutoclient.ValidateIdempotencyKey).
func ValidateKey(k string) error { return fromRequestError(trutoclient.ValidateIdempotencyKey(k)) }

// ParseUpdate decodes one NDJSON line (or any JSON document) into a validated
// Update. Unknown fields are refused so that a typo ("integrated_acount_id")
// is an error rather than a silently missing value; so are a field given twice,
// a field name in another case, and invalid UTF-8 anywhere (see checkJSON).
// Numbers in options keep every digit.
func ParseUpdate(line []byte) (Update, error) {
	var u Update
	if err := decodeStrict(line, "line", updateShape, &u); err != nil {
		return Update{}, err
	}
	// Compact the body so the stored and sent bytes do not carry the line's
	// incidental whitespace; the meaning is unchanged.
	if len(u.Body) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, u.Body); err == nil {
			u.Body = buf.Bytes()
		}
	}
	// decodeStrict walked the body as part of the line, one level deeper (so
	// under a tighter depth limit), and compacting changed none of its tokens.
	if err := u.validate(true); err != nil {
		return Update{}, err
	}
	return u, nil
}

func jsonReason(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%s at byte %d", se.Error(), se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s, got %s", te.Field, te.Type, te.Value)
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
