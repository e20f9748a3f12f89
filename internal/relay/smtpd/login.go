package smtpd

import (
	"errors"

	"github.com/emersion/go-sasl"
)

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login-00), which go-sasl implements only for
// clients. Outlook and many devices still use it. go-smtp base64-encodes
// the challenges: "Username:" and "Password:" (RFC 4954 section 4 framing).
type loginServer struct {
	step     int
	username string
	auth     func(username, password string) error
}

func newLoginServer(auth func(username, password string) error) sasl.Server {
	return &loginServer{auth: auth}
}

var errLoginUnexpected = errors.New("unexpected LOGIN response")

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step = 1
		if response != nil {
			// Initial response: AUTH LOGIN <base64 username>.
			s.username = string(response)
			s.step = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		s.username = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		return nil, true, s.auth(s.username, string(response))
	default:
		return nil, true, errLoginUnexpected
	}
}
