// Package redisconn turns orgsync's REDIS_URL into a Redis connection shared
// by asynq and orgsync's own stores, owns the one redaction through which
// every message, log line and error shows a Redis URL, and the one way
// orgsync pipelines Lua scripts by their SHA (Pipelined).
//
// The forms are asynq's (Forms), but for one: in a redis-sentinel:// URL the
// user-info password (and user name, if given) is the master's and
// replicas', the data's, as in a redis:// URL, and the sentinels' own, if
// they ask for one, is the query's sentinel_password= (and
// sentinel_username=), percent-encoded:
//
//	redis-sentinel://:DATA_PW@s1:26379,s2:26379,s3:26379?master=orgsync&sentinel_password=SENTINEL_PW
//
// asynq gives the user-info password to the sentinels alone, so a master
// asking for a password (requirepass, the usual production set-up) could
// not be reached. The URL's password is not sent to the sentinels: they
// rarely share the master's, and often ask for none.
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// DefaultURL is used when REDIS_URL is unset.
const DefaultURL = "redis://127.0.0.1:6379/0"

// Forms lists the accepted URL forms, for error messages and help text. In
// a redis-sentinel:// URL the user-info password (and user name) is the
// master's and replicas', as in a redis:// URL; the sentinels' own, if they
// ask for one, is sentinel_password= (percent-encoded).
const Forms = "redis://[:password@]host:port[/db], rediss://... (TLS), " +
	"redis-sentinel://[:password@]host:port[,host:port...]?master=NAME[&sentinel_password=PW] " +
	"(password: the master's and replicas'; sentinel_password: the sentinels', percent-encoded), " +
	"redis-cluster://[:password@]host:port[,host:port...]"

// Parse returns asynq's connection options for a REDIS_URL. Its errors show
// the URL only through Redact.
func Parse(raw string) (asynq.RedisConnOpt, error) {
	if raw == "" {
		raw = DefaultURL
	}
	if rest, ok := strings.CutPrefix(raw, "redis-cluster://"); ok {
		u, err := url.Parse("redis://" + rest)
		if err != nil {
			return nil, parseError(raw, err)
		}
		opt := asynq.RedisClusterClientOpt{Addrs: strings.Split(u.Host, ",")}
		if u.User != nil {
			opt.Username = u.User.Username()
			opt.Password, _ = u.User.Password()
		}
		return opt, nil
	}
	opt, err := asynq.ParseRedisURI(raw)
	if err != nil {
		return nil, parseError(raw, err)
	}
	if f, ok := opt.(asynq.RedisFailoverClientOpt); ok {
		if f.MasterName == "" {
			return nil, fmt.Errorf("REDIS_URL %s is not understood (no master name: add ?master=NAME, the name the sentinels monitor, "+
				"as in their `sentinel monitor NAME host port quorum` line); expected one of %s", Redact(raw), Forms)
		}
		return sentinelCredentials(raw, f)
	}
	return opt, nil
}

// sentinelCredentials puts a redis-sentinel:// URL's credentials where they
// belong. asynq gives the user-info password to the sentinels alone, so a
// master asking for a password could not be reached; here the user-info (user
// name and password) is the master's and replicas', as in a redis:// URL,
// and the sentinels get sentinel_username= and sentinel_password= from the
// query, and nothing when those are absent: the sentinels and the data
// servers rarely share a password, and often the sentinels ask for none.
func sentinelCredentials(raw string, f asynq.RedisFailoverClientOpt) (asynq.RedisConnOpt, error) {
	u, err := url.Parse(raw) // asynq parsed it already: this does not fail
	if err != nil {
		return nil, parseError(raw, err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL %s is not understood (its query does not parse: %s; "+
			"a value holding %% & # + or a space must be percent-encoded: %%25 %%26 %%23 %%2B %%20); expected one of %s",
			Redact(raw), quoted.ReplaceAllString(err.Error(), "(hidden)"), Forms)
	}
	f.Username, f.Password = "", ""
	if u.User != nil {
		f.Username = u.User.Username()
		f.Password, _ = u.User.Password()
	}
	f.SentinelUsername, f.SentinelPassword = q.Get("sentinel_username"), q.Get("sentinel_password")
	return f, nil
}

// Open parses raw and connects, checking the connection with a PING bounded
// by timeout. The caller closes the client.
func Open(ctx context.Context, raw string, timeout time.Duration) (redis.UniversalClient, error) {
	opt, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	rdb, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("REDIS_URL %s: unsupported connection type", Redact(raw))
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		if wrong := wrongKind(ctx, raw, opt, timeout); wrong != nil {
			return nil, wrong
		}
		return nil, fmt.Errorf("cannot reach Redis at %s: %w (is it running? set REDIS_URL)", Redact(raw), err)
	}
	if c, ok := rdb.(*redis.Client); ok {
		// A Sentinel, or a node of a Cluster of several masters, answers
		// PING but not the commands that follow.
		if wrong := plainIsWrongKind(pctx, raw, c); wrong != nil {
			_ = rdb.Close()
			return nil, wrong
		}
	}
	return rdb, nil
}

// quoted matches a Go-quoted string inside an error message.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// parseError says why raw was refused without repeating it. A *url.Error
// quotes the whole URL, and its inner error quotes the piece it stumbled on
// (`invalid port ":pa"` for a password holding a slash), so neither is shown
// as it is: the inner error is kept with its quoted piece left out.
func parseError(raw string, err error) error {
	reason := strings.TrimPrefix(err.Error(), "asynq: ")
	var ue *url.Error
	switch {
	case !strings.Contains(raw, "://"):
		reason = "no scheme: it must start with redis://, rediss://, redis-sentinel:// or redis-cluster://"
	case errors.As(err, &ue):
		reason = "it does not parse as a URL: " + quoted.ReplaceAllString(ue.Err.Error(), "(hidden)") +
			"; a password holding @ : / ? # %, a space or a control character must be percent-encoded (%40 for @, %2F for /)"
	}
	return fmt.Errorf("REDIS_URL %s is not understood (%s); expected one of %s", Redact(raw), reason, Forms)
}

// userinfoEnd finds the '@' that ends a URL's user information (rest: the
// URL after its scheme), or -1 when it has none. It is the last '@' (a
// password may hold unescaped @ / ? #), unless that '@' sits in a query
// value (a key=value pair after a '?': ?sentinel_password=p@ss), where
// net/url reads it too, its query beginning at the first '?'. Then the user
// information ends at the last '@' before that '?', or there is none if
// what precedes the '?' is a list of host:port; otherwise either reading
// may be right (the password may hold "?k=v"), and unsure says to hide all
// that follows the last '@' as well.
func userinfoEnd(rest string) (at int, unsure bool) {
	at = strings.LastIndex(rest, "@")
	if at < 0 {
		return -1, false
	}
	q := strings.Index(rest[:at], "?")
	if q < 0 {
		return at, false
	}
	pair := rest[q+1 : at]
	if i := strings.LastIndex(pair, "&"); i >= 0 {
		pair = pair[i+1:]
	}
	if !strings.Contains(pair, "=") {
		return at, false
	}
	if a := strings.LastIndex(rest[:q], "@"); a >= 0 {
		return a, false
	}
	if authority, _, _ := strings.Cut(rest[:q], "/"); hostList.MatchString(authority) {
		return -1, false
	}
	return at, true
}

// hostList matches host[:port][,host[:port]...], the authority of a URL
// without user information.
var hostList = regexp.MustCompile(`^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?(?:,(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?)*$`)

// hidden stands in for a secret in a redacted URL.
const hidden = "xxxxx"

// Redact returns a Redis URL fit to print, with xxxxx in place of the
// password, of a user name given without a password (it may be a password
// written in the wrong place), of every query value but master= and db=
// (sentinel_password= among them, and whatever else a careless URL carries
// there) and of any fragment. It reads the text rather than a parsed URL, so
// it also hides the secrets of a URL that does not parse; like net/url it
// ends the user information at the last '@', so a password holding an
// unescaped / ? # or @ stays hidden, unless that '@' sits in a query value
// (sentinel_password=p@ss): then the user information, if any, ends before
// the query. When in doubt it hides too much: a stray '@' in the path or
// query hides the host as well.
func Redact(raw string) string {
	var b strings.Builder
	rest := raw
	if scheme, after, ok := strings.Cut(raw, "://"); ok {
		b.WriteString(scheme + "://")
		rest = after
	}
	if at, unsure := userinfoEnd(rest); at >= 0 {
		if user, _, hasPassword := strings.Cut(rest[:at], ":"); hasPassword {
			b.WriteString(user + ":" + hidden)
		} else {
			b.WriteString(hidden)
		}
		b.WriteByte('@')
		rest = rest[at+1:]
		if unsure {
			// What follows may be the rest of a query value.
			b.WriteString(hidden)
			return b.String()
		}
	}
	rest, fragment, hasFragment := strings.Cut(rest, "#")
	rest, query, hasQuery := strings.Cut(rest, "?")
	b.WriteString(rest)
	if hasQuery {
		b.WriteByte('?')
		for i, pair := range strings.Split(query, "&") {
			if i > 0 {
				b.WriteByte('&')
			}
			switch key, _, hasValue := strings.Cut(pair, "="); {
			case hasValue && (strings.EqualFold(key, "master") || strings.EqualFold(key, "db")):
				b.WriteString(pair)
			case hasValue:
				b.WriteString(key + "=" + hidden)
			default:
				b.WriteString(hidden)
			}
		}
	}
	if hasFragment && fragment != "" {
		b.WriteString("#" + hidden)
	}
	return b.String()
}
