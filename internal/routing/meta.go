package routing

import (
	"fmt"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Keys of a SenderDomain's annotations (or labels) whose values its delivery
// notifications carry as meta.account and meta.customerNo: what the
// receiver's own records call the sender. The annotation wins over a label
// of the same key.
const (
	AccountKey    = "postgate.io/account"
	CustomerNoKey = "postgate.io/customer-no"
)

// maxMetaValue bounds those values: they go into every notification.
const maxMetaValue = 128

// metaValue is the annotation key of m, else its label key, else "".
func metaValue(m *metav1.ObjectMeta, key string) string {
	if v, ok := m.Annotations[key]; ok {
		return v
	}
	return m.Labels[key]
}

// validateNotifyMeta refuses an account or customer number that cannot go
// into a notification as written: one the relay cut or cleaned up would
// tell the receiver something the owner did not say.
func validateNotifyMeta(m *metav1.ObjectMeta) string {
	for _, key := range []string{AccountKey, CustomerNoKey} {
		v := metaValue(m, key)
		where := "metadata.labels"
		if _, ok := m.Annotations[key]; ok {
			where = "metadata.annotations"
		}
		switch {
		case len(v) > maxMetaValue:
			return fmt.Sprintf("%s[%s]: %d bytes, at most %d", where, key, len(v), maxMetaValue)
		case !printableUTF8(v):
			return fmt.Sprintf("%s[%s]: %q holds a control character or is not UTF-8", where, key, v)
		}
	}
	return ""
}

func printableUTF8(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
