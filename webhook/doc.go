// Package webhook is for receivers of postgate's push notifications: the
// JSON body of a notification request (Body) and the check of its
// signature (Verify). It imports the standard library only, so a receiver
// depends on nothing else of postgate.
//
// The relay POSTs one Body per request to the SenderDomain's webhook URL,
// with Content-Type application/json and two headers:
//
//	X-Postgate-Timestamp: the time of signing, in Unix seconds
//	X-Postgate-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">
//
// keyed with the SenderDomain's webhook HMAC key. A receiver checks the
// signature over the body bytes as received (before decoding them) and
// the timestamp's age, then answers 2xx; anything else, or no answer, and
// the relay sends the request again later. Delivery is at least once: a
// receiver de-duplicates on (mail.id, event.type, event.ts).
package webhook
