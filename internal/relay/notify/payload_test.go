package notify

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// testTag is a tag as the reference shows one (a SHA-256 in hex).
const testTag = "a813f47bca9ded6b0305885e235c073e886168b8b63eb5e99d02d00bcc7a6371"

// referenceBody is the push notification of the "Relay Service" format
// with every optional field present: what receivers are written against.
const referenceBody = `{
  "meta": {"account": "m4a_test_user", "customerNo": "99999", "tenant": "Test User",
    "receivedTs": "2020-10-16T05:54:11.043Z", "jobId": "7e5251d9-8661-43c3-bb00-0c1caf168c3f", "version": "1"},
  "notifications": [{
    "meta": {
      "tag": "a813f47bca9ded6b0305885e235c073e886168b8b63eb5e99d02d00bcc7a6371",
      "mail": {"id": "6393ae2f-7c-862b-880754463a38", "email": "recipient@sample.com", "from": "sender@sample.com",
        "mimeFrom": "sender@sample.com"},
      "event": {"type": "DELIVERED", "phase": "DELIVER", "state": "FINISHED", "subType": "OK",
        "ts": "2020-10-16T05:54:18.000Z", "description": "mail delivered"}},
    "content": {
      "mime": {"messageId": "<20201016-54463a38@retarus.com>", "size": "884"},
      "smtp": {"responseCode": "250", "reason": "sent (250 2.0.0 Ok: queued as 3yFnZW2mNlzPk9y)",
        "relay": "your.target.relay", "dsn": "2.0.0",
        "transportEncryption": {"requested": true, "established": true,
          "properties": {"protocol": "TLS1.2", "cipherSuite": "example-cipher-suite"}}}}}]}`

// keyPaths lists the paths of every key in a JSON value, with the type of
// the value ("string", "bool", "object", "array").
func keyPaths(prefix string, v any, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			p := prefix + "." + k
			keyPaths(p, x, out)
		}
		out[prefix] = "object"
	case []any:
		for _, x := range v {
			keyPaths(prefix+"[]", x, out)
		}
		out[prefix] = "array"
	case string:
		out[prefix] = "string"
	case bool:
		out[prefix] = "bool"
	default:
		out[prefix] = "other"
	}
}

// TestReferenceFields: a notification with everything known has exactly the
// fields of the reference, each of the same JSON type: meta.account,
// meta.customerNo, meta.tenant and notifications[].meta.tag included.
func TestReferenceFields(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.setAnnotated(t, map[string]string{routing.AccountKey: "m4a_test_user", routing.CustomerNoKey: "99999"}, hook{"example.test", rcv.url(), key1})
	e := start(t, fastOptions(t.TempDir(), &src))
	a := attempt("Q1", "example.test", delivery.StatusSent)
	a.Tag = testTag
	e.n.Observe(a)
	testenv.EventuallyTrue(t, "still waiting for a request", func() bool { return len(rcv.requests()) == 1 })

	var ref, got any
	if err := json.Unmarshal([]byte(referenceBody), &ref); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(rcv.requests()[0].body, &got); err != nil {
		t.Fatal(err)
	}
	want, have := map[string]string{}, map[string]string{}
	keyPaths("", ref, want)
	keyPaths("", got, have)
	for p, typ := range want {
		if have[p] != typ {
			t.Errorf("%s: %q, the reference has %q", p, have[p], typ)
		}
	}
	for p := range have {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: not in the reference", p)
		}
	}
	body := got.(map[string]any)
	meta := body["meta"].(map[string]any)
	n := body["notifications"].([]any)[0].(map[string]any)["meta"].(map[string]any)
	if meta["account"] != "m4a_test_user" || meta["customerNo"] != "99999" || meta["tenant"] != "team" || n["tag"] != testTag {
		t.Errorf("meta %v, tag %v", meta, n["tag"])
	}
}

// TestMetaUnset: without the annotations and a tag, account, customerNo
// and tag are there, empty (the reference does not make them optional);
// tenant is the namespace.
func TestMetaUnset(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	e := start(t, fastOptions(t.TempDir(), &src))
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for a request", func() bool { return len(rcv.requests()) == 1 })
	var body struct {
		Meta          map[string]any `json:"meta"`
		Notifications []struct {
			Meta map[string]any `json:"meta"`
		} `json:"notifications"`
	}
	if err := json.Unmarshal(rcv.requests()[0].body, &body); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"account": "", "customerNo": "", "tenant": "team"} {
		if v, ok := body.Meta[k]; !ok || v != want {
			t.Errorf("meta.%s = %v (present %v), want %q", k, v, ok, want)
		}
	}
	if v, ok := body.Notifications[0].Meta["tag"]; !ok || v != "" {
		t.Errorf("tag = %v (present %v)", v, ok)
	}
}

// TestMetaSurvivesRestart: the tag, account, customer number and tenant are
// journaled with the notification: a restart before it is sent keeps them.
func TestMetaSurvivesRestart(t *testing.T) {
	rcv := newReceiver(t)
	rcv.status = 503
	var src tables
	src.setAnnotated(t, map[string]string{routing.AccountKey: "acct-1", routing.CustomerNoKey: "42"}, hook{"example.test", rcv.url(), key1})
	dir := t.TempDir()
	e := start(t, fastOptions(dir, &src))
	a := attempt("Q1", "example.test", delivery.StatusSent)
	a.Tag = "campaign-7"
	e.n.Observe(a)
	testenv.EventuallyTrue(t, "still waiting for a refused try", func() bool { return len(rcv.requests()) >= 1 })
	e.stop()
	rcv.mu.Lock()
	rcv.status = 0
	rcv.mu.Unlock()
	e = start(t, fastOptions(dir, &src))
	testenv.EventuallyTrue(t, "still waiting for sent", func() bool { return e.count(resultSent) == 1 })
	reqs := rcv.requests()
	last := reqs[len(reqs)-1].parsed
	if last.Meta.Account != "acct-1" || last.Meta.CustomerNo != "42" || last.Meta.Tenant != "team" ||
		!slices.EqualFunc(last.Notifications, []Notification{{}}, func(n, _ Notification) bool { return n.Meta.Tag == "campaign-7" }) {
		t.Errorf("after a restart: %+v", last)
	}
}

// TestHeldIsDeferred: a message held because its RelayRoute cannot take
// effect is notified as DEFERRED, with the 4.4.4 hold and its reason, and
// no relay (no host was tried).
func TestHeldIsDeferred(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	e := start(t, fastOptions(t.TempDir(), &src))

	a := attempt("Q1", "example.test", delivery.StatusDeferred)
	held := queue.Reply{Enhanced: "4.4.4", Text: `held: RelayRoute team/route cannot take effect: Secret "creds" (target credentials) not found`}
	a.Cause, a.Reply, a.Recipients[0].Reply = delivery.CauseHeld, held, held
	a.RelayHost, a.RelayAddr, a.TLS = "", netip.AddrPort{}, delivery.TLSInfo{}
	e.n.Observe(a)
	testenv.EventuallyTrue(t, "no notification", func() bool { return len(rcv.notifications(key1)) == 1 })
	n := rcv.notifications(key1)[0]
	if ev, smtp := n.Meta.Event, n.Content.SMTP; ev.Type != TypeDeferred || smtp.DSN != "4.4.4" || smtp.Relay != "" ||
		!strings.Contains(smtp.Reason, "held: RelayRoute team/route cannot take effect") {
		t.Errorf("event %+v, smtp %+v: want DEFERRED 4.4.4 naming the route, no relay", ev, smtp)
	}
}

// TestThrottledDescription: a recipient that traffic shaping deferred is
// notified as DEFERRED with a description that names its site and until
// when, and says whether the receiver throttled or a limit was reached.
func TestThrottledDescription(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	e := start(t, fastOptions(t.TempDir(), &src))

	until := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	suspended := attempt("Q1", "example.test", delivery.StatusDeferred)
	reply := queue.Reply{Code: 451, Enhanced: "4.7.0", Text: "site google.com suspended until 2026-12-06T12:00:00Z: throttled"}
	suspended.Cause, suspended.Reply, suspended.Recipients[0].Reply = delivery.CauseThrottled, reply, reply
	suspended.RelayHost, suspended.RelayAddr, suspended.TLS = "", netip.AddrPort{}, delivery.TLSInfo{}
	suspended.Site, suspended.ThrottledUntil, suspended.SiteSuspended = "google.com", until, true
	limited := suspended
	limited.QueueID, limited.SiteSuspended = "Q2", false
	plain := attempt("Q3", "example.test", delivery.StatusDeferred)
	for _, a := range []delivery.Attempt{suspended, limited, plain} {
		e.n.Observe(a)
	}
	testenv.EventuallyTrue(t, "no notifications", func() bool { return len(rcv.notifications(key1)) == 3 })
	want := []string{
		"delivery deferred: site google.com suspended until 2026-12-06T12:00:00Z (throttled by the receiver), will retry",
		"delivery deferred: site google.com limit reached, until 2026-12-06T12:00:00Z, will retry",
		"delivery deferred, will retry",
	}
	for i, n := range rcv.notifications(key1) {
		if ev := n.Meta.Event; ev.Type != TypeDeferred || ev.Description != want[i] {
			t.Errorf("notification %d: %s %q, want DEFERRED %q", i, ev.Type, ev.Description, want[i])
		}
	}
}
