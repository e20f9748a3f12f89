package shaping

import (
	"fmt"
	"testing"
)

// BenchmarkAdmission is what shaping adds to one message on a pooled
// connection (AcquireMessage) and to a new connection (AcquireConn and
// Release), on a site without rate limits.
func BenchmarkAdmission(b *testing.B) {
	p, err := Parse([]byte(`
default:
  maxConnections: 1000000
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`))
	if err != nil {
		b.Fatal(err)
	}
	l := NewLimiter(p, newFakeClock())
	b.Run("message", func(b *testing.B) {
		c, _ := l.AcquireConn(googleSite)
		for b.Loop() {
			c.AcquireMessage()
		}
	})
	b.Run("connection", func(b *testing.B) {
		for b.Loop() {
			c, _ := l.AcquireConn(googleSite)
			c.Release()
		}
	})
	b.Run("observe", func(b *testing.B) {
		l := NewLimiter(DefaultPolicy(), newFakeClock())
		r := Reply{450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. - gsmtp"}
		for b.Loop() {
			l.Observe(googleSite, r)
		}
	})
}

func BenchmarkFairQueue(b *testing.B) {
	q := NewFairQueue[int]()
	tenants := make([]string, 100)
	for i := range tenants {
		tenants[i] = fmt.Sprint("tenant", i)
	}
	i := 0
	for b.Loop() {
		q.Push(tenants[i%len(tenants)], i)
		i++
		if q.Len() > 1000 {
			q.Next()
		}
	}
}
