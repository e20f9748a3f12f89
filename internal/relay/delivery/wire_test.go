package delivery

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// dataSection returns what was written between DATA's 354 and the final
// dot, the terminating CRLF.CRLF included.
func dataSection(t *testing.T, wire string) string {
	t.Helper()
	i := strings.Index(wire, "DATA\r\n")
	j := strings.LastIndex(wire, "\r\n.\r\n")
	if i < 0 || j < i {
		t.Fatalf("no DATA section in:\n%q", wire)
	}
	return wire[i+len("DATA\r\n") : j+len("\r\n.\r\n")]
}

// The message reaches the wire as stored, dot-stuffed, CRLF only, and the
// next hop reads back exactly the stored bytes.
func TestWireIsSafe(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	e.start()
	body := "Subject: dots\r\n\r\n.leading dot\r\n.\r\n..two\r\nmiddle . dot\r\n.\r\nend\r\n"
	id := e.enqueueEnv(queue.Envelope{From: "app@sender.test", To: []queue.Rcpt{{Addr: "user@rcpt.test"}}}, body)
	e.waitGone(id)
	got := dataSection(t, e.wire.Written()[0])
	want := "Subject: dots\r\n\r\n..leading dot\r\n..\r\n...two\r\nmiddle . dot\r\n..\r\nend\r\n.\r\n"
	if got != want {
		t.Errorf("on the wire:\n%q\nwant\n%q", got, want)
	}
	for i := range len(got) {
		switch {
		case got[i] == 0:
			t.Fatalf("NUL at %d", i)
		case got[i] == '\r' && (i+1 == len(got) || got[i+1] != '\n'):
			t.Fatalf("bare CR at %d", i)
		case got[i] == '\n' && (i == 0 || got[i-1] != '\r'):
			t.Fatalf("bare LF at %d", i)
		}
	}
	if msgs := sink.Messages(); len(msgs) != 1 || string(msgs[0].Data) != body {
		t.Errorf("the next hop read %q, want %q", msgs[0].Data, body)
	}
}

// A stored message with a bare LF, bare CR or NUL (a damaged or imported
// spool file) never reaches the next hop: the transaction is cut before
// the final dot, and the recipient fails.
func TestUnsafeStoredBytesNeverSent(t *testing.T) {
	for name, body := range map[string]string{
		"bare LF":  "Subject: x\r\n\r\nline\n.\r\nMAIL FROM:<evil@x>\r\n",
		"bare CR":  "Subject: x\r\n\r\nline\r.\r\n",
		"NUL":      "Subject: x\r\n\r\nnul\x00\r\n",
		"final CR": "Subject: x\r\n\r\nend\r",
	} {
		t.Run(name, func(t *testing.T) {
			e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
			e.start()
			id := e.enqueueEnv(queue.Envelope{From: "app@sender.test", To: []queue.Rcpt{{Addr: "user@rcpt.test"}}}, body)
			e.waitGone(id)
			a := e.attempt(1)
			if a.Status != StatusBounced || a.Cause != CauseMessage || a.Reply.Enhanced != "5.6.0" {
				t.Fatalf("attempt: %+v", a)
			}
			if len(sink.Messages()) != 0 {
				t.Fatal("the next hop accepted the message")
			}
			wire := e.wire.Written()[0]
			if strings.Contains(wire, "\r\n.\r\n") || strings.ContainsAny(wire, "\x00") || strings.Contains(wire, "evil") {
				t.Errorf("on the wire: %q", wire)
			}
		})
	}
}

// Canceling Run aborts the attempt under way: nothing reaches the next
// hop, nothing is recorded, the message stays queued and a new worker on
// the reopened queue delivers it. A deferred message keeps its schedule
// across the restart.
func TestShutdownAbortsAndRestartResumes(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	sink.SetFault(testenv.StageData, testenv.Fault{Delay: time.Hour})
	e.start()
	slow := e.enqueue("app@sender.test", "user@rcpt.test")
	e.waitFor("the message to reach DATA", func() bool {
		c := sink.Conns()
		return len(c) == 1 && strings.Contains(strings.Join(c[0].Transcript, "\n"), "C: DATA")
	})
	e.stop() // fails unless Run returns long before the hour is up
	if len(sink.Messages()) != 0 || len(e.observer.Attempts()) != 0 {
		t.Fatal("an aborted attempt was delivered or recorded")
	}
	m, ok := e.message(slow)
	if !ok || m.Recipients[0].State != queue.Pending || m.Recipients[0].Attempts != 0 {
		t.Fatalf("after the abort: %+v", m)
	}

	// A deferred message next to it, then a restart.
	sink.ClearFaults()
	sink.SetFault(testenv.StageRcpt, testenv.Fault{Code: 450, Text: "try later", Times: 1})
	deferred := e.enqueue("app@sender.test", "other@rcpt.test")
	_ = e.q.Hold(context.Background(), slow)
	e.start()
	e.attempt(1)
	e.stop()
	m, _ = e.message(deferred)
	next := m.Recipients[0].NextAttempt
	if err := e.q.Close(); err != nil {
		t.Fatal(err)
	}
	e.openQueue()
	if err := e.q.Release(context.Background(), slow); err != nil {
		t.Fatal(err)
	}
	restarted := e.clock.timersSet()
	e.start()
	e.waitGone(slow)
	m, _ = e.message(deferred)
	if !m.Recipients[0].NextAttempt.Equal(next) || m.Recipients[0].Attempts != 1 {
		t.Fatalf("schedule after restart %+v, want next attempt %v", m.Recipients[0], next)
	}
	e.clock.waitArmed(t, restarted, next) // the restarted worker waits for the deferred message's time
	if _, ok := e.message(deferred); !ok {
		t.Fatal("the deferred message went before its time")
	}
	e.advanceToNext()
	e.waitGone(deferred)
}

// Shutdown lets the attempt under way finish (and be recorded), then Run
// returns.
func TestShutdownFinishesInFlight(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	sink.SetFault(testenv.StageData, testenv.Fault{Delay: 200 * time.Millisecond})
	w := e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	e.waitFor("a connection", func() bool { return sink.Stats().Connections == 1 })
	sctx, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer cancel()
	if err := w.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.message(id); ok || len(sink.Messages()) != 1 {
		t.Fatal("the attempt under way did not finish")
	}
	select {
	case err := <-e.runErr:
		if err != nil {
			t.Fatal(err)
		}
		e.w = nil
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("Run did not return after Shutdown")
	}
}
