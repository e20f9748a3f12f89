package webhook

import (
	"errors"
	"testing"
	"time"
)

// TestSign checks Sign against a signature computed without it, as the
// README's shell recipe does:
//
//	printf '%s.%s' 1800000000 '{"x":1}' | openssl dgst -sha256 -hmac k
func TestSign(t *testing.T) {
	const want = "v1=feee02941e35575778b765b1e680b8c80981aec46ba5a5ae05bd80e124ea45ab"
	if got := Sign([]byte("k"), "1800000000", []byte(`{"x":1}`)); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	key := []byte("k")
	body := []byte(`{"x":1}`)
	now := time.Unix(1_800_000_000, 0)
	ts := "1800000000"
	sig := Sign(key, ts, body)
	for _, tc := range []struct {
		name           string
		key            []byte
		ts, sig        string
		body           []byte
		now            time.Time
		wantErr        error
		wantAnyFailure bool
	}{
		{name: "good", key: key, ts: ts, sig: sig, body: body, now: now},
		{name: "good, a little late", key: key, ts: ts, sig: sig, body: body, now: now.Add(4 * time.Minute)},
		{name: "two signatures", key: key, ts: ts, sig: "v2=abcd, " + sig, body: body, now: now},
		{name: "stale", key: key, ts: ts, sig: sig, body: body, now: now.Add(6 * time.Minute), wantErr: ErrStale},
		{name: "future", key: key, ts: ts, sig: sig, body: body, now: now.Add(-6 * time.Minute), wantErr: ErrStale},
		{name: "other key", key: []byte("j"), ts: ts, sig: sig, body: body, now: now, wantErr: ErrBadSignature},
		{name: "other body", key: key, ts: ts, sig: sig, body: []byte(`{"x":2}`), now: now, wantErr: ErrBadSignature},
		{name: "timestamp not signed", key: key, ts: "1800000001", sig: sig, body: body, now: now, wantErr: ErrBadSignature},
		{name: "not hex", key: key, ts: ts, sig: "v1=zz", body: body, now: now, wantErr: ErrBadSignature},
		{name: "no signature", key: key, ts: ts, body: body, now: now, wantErr: ErrBadSignature},
		{name: "bad timestamp", key: key, ts: "soon", sig: sig, body: body, now: now, wantAnyFailure: true},
	} {
		err := Verify(tc.key, tc.ts, tc.sig, tc.body, tc.now, MaxSignatureAge)
		switch {
		case tc.wantAnyFailure:
			if err == nil {
				t.Errorf("%s: no error", tc.name)
			}
		case !errors.Is(err, tc.wantErr):
			t.Errorf("%s: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
}
