package webhook_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"time"

	"github.com/postgate/postgate/webhook"
)

// A receiver: check the signature over the body as received, then decode
// it. A request the receiver does not answer with 2xx is sent again.
func Example() {
	key := []byte("the SenderDomain's webhook HMAC key")
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		if err := webhook.Verify(key, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature),
			body, time.Now(), webhook.MaxSignatureAge); err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var b webhook.Body
		if err := json.Unmarshal(body, &b); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		for _, n := range b.Notifications {
			// De-duplicate on (mail.id, event.type, event.ts): delivery is
			// at least once.
			fmt.Println(n.Meta.Mail.ID, n.Meta.Event.Type, n.Meta.Mail.Email)
		}
		w.WriteHeader(http.StatusNoContent)
	})

	// What the relay sends.
	body := []byte(`{"meta":{"account":"","customerNo":"","tenant":"team","receivedTs":"2026-12-06T04:00:00.000Z","jobId":"01hf7yat00yqhhxd8zvq2z7knv","version":"1"},` +
		`"notifications":[{"meta":{"tag":"","mail":{"id":"01hf7yat00yqhhxd8zvq2z7knv.0","email":"rcpt@example.net","from":"bounces@example.com"},` +
		`"event":{"type":"DELIVERED","phase":"DELIVER","state":"FINISHED","subType":"OK","ts":"2026-12-06T04:00:01.000Z","description":"mail delivered"}}}]}`)
	send := func(signKey []byte) int {
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req := httptest.NewRequest(http.MethodPost, "/postgate", bytes.NewReader(body))
		req.Header.Set(webhook.HeaderTimestamp, ts)
		req.Header.Set(webhook.HeaderSignature, webhook.Sign(signKey, ts, body))
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		return rec.Code
	}
	fmt.Println(send(key))
	fmt.Println(send([]byte("another key")))
	// Output:
	// 01hf7yat00yqhhxd8zvq2z7knv.0 DELIVERED rcpt@example.net
	// 204
	// 401
}
