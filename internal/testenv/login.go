package testenv

import "github.com/emersion/go-sasl"

// loginServer is the server side of the LOGIN SASL mechanism
// (draft-murchison-sasl-login; the prompts RFC 4954 section 4 shows in
// base64 as "VXNlcm5hbWU6" and "UGFzc3dvcmQ6"), which go-sasl lacks. A
// username sent as the initial response (AUTH LOGIN dXNlcg==, as go-sasl's
// client does) skips the first prompt.
type loginServer struct {
	step     int
	username string
	check    func(username, password string) error
}

var _ sasl.Server = (*loginServer)(nil)

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.check(l.username, string(response))
	default:
		return nil, false, sasl.ErrUnexpectedClientResponse
	}
}
