// The LiveKit side of the daemon's differential test (tests/it/livekit_reading.rs):
// how livekit-server v1.13.5 reads a participant's token from a signalling
// request, with the Go standard library and github.com/livekit/protocol/auth
// at the versions that release builds with (go.mod here pins them; the build
// step checks them against livekit-server's own go.mod).
//
// stdin: one JSON case per line,
//
//	{"request": base64 of the raw HTTP/1.1 request as LiveKit receives it,
//	 "key": the API key LiveKit knows, "secret": its secret}
//
// stdout: one JSON line per case, in order (see outcome below).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/livekit/protocol/auth"
)

type testCase struct {
	Request []byte `json:"request"`
	Key     string `json:"key"`
	Secret  string `json:"secret"`
}

// Each stage is reported only when the one before it let the request on,
// in the order livekit-server's auth middleware runs them.
type outcome struct {
	// The request did not parse (net/http's server answers 400).
	RequestError string `json:"request_error,omitempty"`
	// An Authorization header that is not "Bearer …" (LiveKit answers 401).
	Refused bool `json:"refused"`
	// The token LiveKit goes on with, as bytes (base64 in JSON: Go strings
	// need not be UTF-8); empty means none, and the request goes on
	// unauthenticated.
	Token []byte `json:"token"`
	// auth.ParseAPIToken's verdict and what it read.
	Parsed     bool   `json:"parsed"`
	ParseError string `json:"parse_error,omitempty"`
	APIKey     string `json:"api_key"`
	Identity   string `json:"identity"`
	// Whether the token's API key is the one LiveKit knows (else 401).
	KeyKnown bool `json:"key_known"`
	// Verify with that key's secret, and the room-join grant it carries.
	Verified    bool   `json:"verified"`
	VerifyError string `json:"verify_error,omitempty"`
	RoomJoin    bool   `json:"room_join"`
	// The identity in the verified grants (LiveKit's participant identity).
	GrantIdentity string `json:"grant_identity"`
}

func judge(c testCase) outcome {
	var out outcome
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(c.Request)))
	if err != nil {
		out.RequestError = err.Error()
		return out
	}
	// livekit-server's rule (pkg/service/auth.go): the header's first value
	// wins and must carry the Bearer scheme, exactly so cased and spaced;
	// without a header, the form's first access_token.
	var token string
	if header := r.Header.Get("Authorization"); header != "" {
		rest, ok := strings.CutPrefix(header, "Bearer ")
		if !ok {
			out.Refused = true
			return out
		}
		token = rest
	} else {
		token = r.FormValue("access_token")
	}
	out.Token = []byte(token)
	if token == "" {
		return out
	}
	v, err := auth.ParseAPIToken(token)
	if err != nil {
		out.ParseError = err.Error()
		return out
	}
	out.Parsed = true
	out.APIKey = v.APIKey()
	out.Identity = v.Identity()
	// LiveKit's key provider answers "" for a key it does not hold, and
	// the middleware refuses the token before verifying anything.
	if c.Key == "" || v.APIKey() != c.Key {
		return out
	}
	out.KeyKnown = true
	_, grants, err := v.Verify(c.Secret)
	if err != nil {
		out.VerifyError = err.Error()
		return out
	}
	out.Verified = true
	out.GrantIdentity = grants.Identity
	out.RoomJoin = grants.Video != nil && grants.Video.RoomJoin
	return out
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<16), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for in.Scan() {
		var c testCase
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			fmt.Fprintf(os.Stderr, "livekit-auth oracle: a case that is not JSON: %v\n", err)
			os.Exit(2)
		}
		if err := enc.Encode(judge(c)); err != nil {
			fmt.Fprintf(os.Stderr, "livekit-auth oracle: %v\n", err)
			os.Exit(1)
		}
		// The test waits for each answer before it sends the next case.
		if err := out.Flush(); err != nil {
			fmt.Fprintf(os.Stderr, "livekit-auth oracle: %v\n", err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "livekit-auth oracle: reading the cases: %v\n", err)
		os.Exit(1)
	}
}
