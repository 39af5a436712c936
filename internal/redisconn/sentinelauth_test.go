package redisconn

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/orgsync/orgsync/internal/redistest"
)

// TestParseSentinelCredentials: a redis-sentinel:// URL's user-info is the
// master's and replicas' (asynq gave its password to the sentinels), and
// the sentinels get only what sentinel_username= and sentinel_password= say,
// percent-decoded.
func TestParseSentinelCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw  string
		want asynq.RedisFailoverClientOpt
	}{
		{"redis-sentinel://:D4ta!pw@s1:26379?master=m",
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:26379"}, Password: "D4ta!pw"}},
		{"redis-sentinel://s1:26379,s2:26379?master=m&sentinel_password=S3nt%21%2Bpw%40%26",
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:26379", "s2:26379"}, SentinelPassword: "S3nt!+pw@&"}},
		{"redis-sentinel://app:D4ta%2Fpw@s1:26379?master=m&sentinel_username=sen&sentinel_password=p@ss",
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:26379"},
				Username: "app", Password: "D4ta/pw", SentinelUsername: "sen", SentinelPassword: "p@ss"}},
	}
	for _, tt := range tests {
		opt, err := Parse(tt.raw)
		got, ok := opt.(asynq.RedisFailoverClientOpt)
		if err != nil || !ok {
			t.Errorf("Parse(%s) = %#v, %v", Redact(tt.raw), opt, err)
			continue
		}
		if got.MasterName != tt.want.MasterName || strings.Join(got.SentinelAddrs, ",") != strings.Join(tt.want.SentinelAddrs, ",") ||
			got.Username != tt.want.Username || got.Password != tt.want.Password ||
			got.SentinelUsername != tt.want.SentinelUsername || got.SentinelPassword != tt.want.SentinelPassword {
			t.Errorf("Parse(%s) = %+v; want %+v", Redact(tt.raw), got, tt.want)
		}
	}

	_, err := Parse("redis-sentinel://s1:26379?master=m&sentinel_password=hunter2%zz")
	if err == nil || !strings.Contains(err.Error(), "its query does not parse") || strings.Contains(err.Error(), "hunter2") ||
		strings.Contains(err.Error(), "%zz") {
		t.Errorf("a query that does not parse: %v; want an error saying so, without the password", err)
	}
}

// TestOpenSentinelPasswords: real Sentinel set-ups whose master and replica
// ask for a password, with sentinels open or asking for a password of their
// own. The right URL opens and reads and writes; each credential missing or
// wrong gives an error that says who refused and where the password goes,
// and no error shows either password, in any encoding.
func TestOpenSentinelPasswords(t *testing.T) {
	t.Parallel()
	const dataPW, sentinelPW = "D4ta!pw+x", "S3nt!nel@pw"
	openSentinels := redistest.StartSentinel(t, redistest.DataPassword(dataPW))
	closed := redistest.StartSentinel(t, redistest.DataPassword(dataPW), redistest.SentinelPassword(sentinelPW))
	addrs := func(s *redistest.Sentinel) string {
		var a []string
		for _, sen := range s.Sentinels() {
			a = append(a, sen.Addr)
		}
		return strings.Join(a, ",")
	}
	userinfo := func(pw string) string { return url.UserPassword("", pw).String() + "@" }
	withSentinelPW := "&sentinel_password=" + url.QueryEscape(sentinelPW)
	ctx := context.Background()

	t.Run("open", func(t *testing.T) {
		t.Parallel()
		for _, raw := range []string{
			// The URL's password goes to the master; the open sentinels get none.
			"redis-sentinel://" + userinfo(dataPW) + addrs(openSentinels) + "?master=orgsync",
			openSentinels.URL(),
			closed.URL(),
			// Unescaped, the sentinels' password may hold an @.
			"redis-sentinel://" + userinfo(dataPW) + addrs(closed) + "?master=orgsync&sentinel_password=" + sentinelPW,
		} {
			rdb, err := Open(ctx, raw, 5*time.Second)
			if err != nil {
				t.Errorf("Open(%s): %v", Redact(raw), err)
				continue
			}
			key := "orgsync-probe-" + t.Name()
			if err := rdb.Ping(ctx).Err(); err != nil {
				t.Errorf("%s: PING: %v", Redact(raw), err)
			}
			if err := rdb.Set(ctx, key, "1", 0).Err(); err != nil {
				t.Errorf("%s: SET: %v", Redact(raw), err)
			}
			if v, err := rdb.Get(ctx, key).Result(); err != nil || v != "1" {
				t.Errorf("%s: GET = %q, %v; want 1", Redact(raw), v, err)
			}
			rdb.Close()
		}
	})

	master := func(s *redistest.Sentinel) string {
		return `the master "orgsync" at ` + s.Master().Addr + " (as the Sentinels name it)"
	}
	tests := []struct {
		name, raw string
		want      []string
	}{
		{"wrong master password", "redis-sentinel://" + userinfo("Wr0ng!pw") + addrs(openSentinels) + "?master=orgsync",
			[]string{master(openSentinels) + " refused the password: the one before the @ must be the master's and replicas'"}},
		{"wrong master password, sentinels with theirs", "redis-sentinel://" + userinfo("Wr0ng!pw") + addrs(closed) + "?master=orgsync" + withSentinelPW,
			[]string{master(closed) + " refused the password", "sentinel_password=xxxxx"}},
		{"the sentinels' password for the master", "redis-sentinel://" + userinfo(sentinelPW) + addrs(closed) + "?master=orgsync" + withSentinelPW,
			[]string{master(closed) + " refused the password"}},
		{"no master password", "redis-sentinel://" + addrs(openSentinels) + "?master=orgsync",
			[]string{master(openSentinels) + " asks for a password and the URL gives none: put the master's password before the @"}},
		{"the sentinels' password as user-info (asynq's form)", "redis-sentinel://" + userinfo(sentinelPW) + addrs(closed) + "?master=orgsync",
			[]string{"the Sentinels at ", "ask for the password given before the @, but that one is the master's and replicas'", "move it to &sentinel_password=PASSWORD"}},
		{"no sentinel password", "redis-sentinel://" + userinfo(dataPW) + addrs(closed) + "?master=orgsync",
			[]string{"the Sentinels at ", "ask for a password and the URL gives them none: add &sentinel_password=PASSWORD"}},
		{"wrong sentinel password", "redis-sentinel://" + userinfo(dataPW) + addrs(closed) + "?master=orgsync&sentinel_password=Wr0ng",
			[]string{"the Sentinels at ", "refused the password in sentinel_password="}},
		{"the master's password for the sentinels", "redis-sentinel://" + userinfo(dataPW) + addrs(closed) + "?master=orgsync&sentinel_password=" + url.QueryEscape(dataPW),
			[]string{"refused the password in sentinel_password="}},
		{"a Sentinel URL at the master", "redis-sentinel://" + userinfo(dataPW) + closed.Master().Addr + "?master=orgsync" + withSentinelPW,
			[]string{"names Sentinels, but " + closed.Master().Addr + " is not one (a Redis server): use redis://" + closed.Master().Addr}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rdb, err := Open(ctx, tt.raw, 5*time.Second)
			if err == nil {
				rdb.Close()
				t.Fatalf("Open(%s) succeeded; want an error", Redact(tt.raw))
			}
			msg := err.Error()
			t.Log(msg)
			for _, pw := range []string{dataPW, sentinelPW, "Wr0ng"} {
				for _, s := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw), url.UserPassword("", pw).String(), pw[:4], pw[len(pw)-3:]} {
					if strings.Contains(msg, s) {
						t.Errorf("the error shows a password (as %q): %s", s, msg)
					}
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error\n%s\nwant it to contain\n%s", msg, w)
				}
			}
		})
	}
}
