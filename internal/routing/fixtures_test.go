package routing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// Fixtures are built with option functions (cert-manager test/unit/gen
// style): a base object plus the changes a case is about.

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func objectMeta(ns, name string, age int) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Namespace: ns, Name: name, Generation: 1,
		UID:               types.UID(ns + "-" + name),
		CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(age) * time.Second)),
	}
}

type sdOpt func(*v1alpha1.SenderDomain)

func senderDomain(ns, name, domain string, age int, opts ...sdOpt) v1alpha1.SenderDomain {
	sd := v1alpha1.SenderDomain{ObjectMeta: objectMeta(ns, name, age), Spec: v1alpha1.SenderDomainSpec{Domain: v1alpha1.DomainName(domain)}}
	for _, o := range opts {
		o(&sd)
	}
	return sd
}

func signedWith(secret string, alg v1alpha1.DKIMAlgorithm) sdOpt {
	return func(sd *v1alpha1.SenderDomain) {
		sd.Spec.Signing = &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: alg, KeySecretRef: &v1alpha1.SecretKeyReference{Name: secret}}
	}
}

func generated() sdOpt {
	return func(sd *v1alpha1.SenderDomain) {
		sd.Spec.Signing = &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: v1alpha1.DKIMAlgorithmEd25519, Generate: &v1alpha1.DKIMKeyGeneration{}}
	}
}

func sourceIP(ip string) sdOpt {
	return func(sd *v1alpha1.SenderDomain) { sd.Spec.SourceIP = v1alpha1.IPAddress(ip) }
}

func lifetime(d time.Duration) sdOpt {
	return func(sd *v1alpha1.SenderDomain) {
		if sd.Spec.Delivery == nil {
			sd.Spec.Delivery = &v1alpha1.DeliveryPolicy{}
		}
		sd.Spec.Delivery.MaxQueueLifetime = &metav1.Duration{Duration: d}
	}
}

func webhook(url, secret string) sdOpt {
	return func(sd *v1alpha1.SenderDomain) {
		if sd.Spec.Delivery == nil {
			sd.Spec.Delivery = &v1alpha1.DeliveryPolicy{}
		}
		sd.Spec.Delivery.Webhook = &v1alpha1.NotificationWebhook{URL: url, HMACSecretRef: v1alpha1.SecretKeyReference{Name: secret}}
	}
}

type rrOpt func(*v1alpha1.RelayRoute)

func relayRoute(ns, name, senderDomain string, age int, opts ...rrOpt) v1alpha1.RelayRoute {
	rr := v1alpha1.RelayRoute{ObjectMeta: objectMeta(ns, name, age), Spec: v1alpha1.RelayRouteSpec{
		SenderDomainRef: v1alpha1.LocalObjectReference{Name: senderDomain},
		Target:          v1alpha1.RelayTarget{Host: "smarthost.relay.test", Port: 587, TLSPolicy: v1alpha1.TLSPolicyRequired, TLSMode: v1alpha1.TLSModeSTARTTLS},
	}}
	for _, o := range opts {
		o(&rr)
	}
	return rr
}

func senders(addrs ...string) rrOpt {
	return func(rr *v1alpha1.RelayRoute) {
		for _, a := range addrs {
			rr.Spec.SenderAddresses = append(rr.Spec.SenderAddresses, v1alpha1.EmailAddress(a))
		}
	}
}

func target(host string) rrOpt {
	return func(rr *v1alpha1.RelayRoute) { rr.Spec.Target.Host = v1alpha1.DomainName(host) }
}

func credentials(secret string) rrOpt {
	return func(rr *v1alpha1.RelayRoute) {
		rr.Spec.Target.CredentialsSecretRef = &v1alpha1.LocalObjectReference{Name: secret}
	}
}

func caBundle(secret string) rrOpt {
	return func(rr *v1alpha1.RelayRoute) {
		rr.Spec.Target.TLSPolicy = v1alpha1.TLSPolicyVerify
		rr.Spec.Target.CABundleSecretRef = &v1alpha1.SecretKeyReference{Name: secret}
	}
}

type tnOpt func(*v1alpha1.TrustedNetwork)

func trustedNetwork(ns, name string, cidrs []string, opts ...tnOpt) v1alpha1.TrustedNetwork {
	tn := v1alpha1.TrustedNetwork{ObjectMeta: objectMeta(ns, name, 0)}
	for _, c := range cidrs {
		tn.Spec.CIDRs = append(tn.Spec.CIDRs, v1alpha1.CIDR(c))
	}
	for _, o := range opts {
		o(&tn)
	}
	return tn
}

func authWith(mode v1alpha1.SMTPAuthMode, secrets ...string) tnOpt {
	return func(tn *v1alpha1.TrustedNetwork) {
		a := &v1alpha1.SMTPAuthentication{Mode: mode}
		for _, s := range secrets {
			a.SecretRefs = append(a.SecretRefs, v1alpha1.LocalObjectReference{Name: s})
		}
		tn.Spec.Authentication = a
	}
}

func secret(ns, name string, typ corev1.SecretType, data map[string]string) corev1.Secret {
	s := corev1.Secret{ObjectMeta: objectMeta(ns, name, 0), Type: typ, Data: map[string][]byte{}}
	s.ResourceVersion = "1"
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func basicAuthSecret(ns, name, user, password string) corev1.Secret {
	return secret(ns, name, corev1.SecretTypeBasicAuth, map[string]string{"username": user, "password": password})
}

func keySecret(ns, name, pemKey string) corev1.Secret {
	return secret(ns, name, corev1.SecretTypeOpaque, map[string]string{DKIMKeySecretKey: pemKey})
}

// Keys are generated once per test binary: RSA generation is slow.
var testKeys = sync.OnceValue(func() (k struct{ ed25519, rsa2048, rsa1024 string }) {
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	k.ed25519 = pkcs8PEM(ed)
	r2, _ := rsa.GenerateKey(rand.Reader, 2048)
	k.rsa2048 = string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(r2)}))
	r1, _ := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // a key too short is what the test is about
	k.rsa1024 = pkcs8PEM(r1)
	return k
})

func pkcs8PEM(key any) string {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func mustVerdict(t *testing.T, r *Result, kind, ns, name string) *Verdict {
	t.Helper()
	v := r.Verdict(ObjectKey{kind, ns, name})
	if v == nil {
		t.Fatalf("no verdict for %s %s/%s", kind, ns, name)
	}
	return v
}

// aged sets an object's creation time, age seconds after the epoch.
func aged(tn v1alpha1.TrustedNetwork, age int) v1alpha1.TrustedNetwork {
	tn.CreationTimestamp = objectMeta(tn.Namespace, tn.Name, age).CreationTimestamp
	return tn
}

// slashEights returns the IPv4 /8 networks from first.0.0.0 to end-1.0.0.0.
func slashEights(first, end int) []string {
	var out []string
	for i := first; i < end; i++ {
		out = append(out, fmt.Sprintf("%d.0.0.0/8", i))
	}
	return out
}
