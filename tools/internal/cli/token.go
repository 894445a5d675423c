package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// tokenEnv names the environment variable serve and replicate take the
// bearer token from when neither --token-file nor --token is given.
const tokenEnv = "SEGSTORE_TOKEN"

// maxTokenFile bounds what --token-file reads: a token is a line.
const maxTokenFile = 4 << 10

// resolveToken returns the bearer token of serve or replicate: read from
// file (--token-file, surrounding white space dropped), else given on the
// command line (--token, which every user of the machine sees in ps: a
// warning goes to warn), else from $SEGSTORE_TOKEN; "" if none is set.
func resolveToken(warn io.Writer, flag, file string) (string, error) {
	switch {
	case flag != "" && file != "":
		return "", usageError{errors.New("--token and --token-file: give the token one way (--token-file or " + tokenEnv + " keep it out of ps)")}
	case file != "":
		f, err := os.Open(file)
		if err != nil {
			return "", usageError{fmt.Errorf("--token-file: %w", err)}
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
		if err != nil {
			return "", fmt.Errorf("--token-file: reading %s: %w", file, err)
		}
		if len(b) > maxTokenFile {
			return "", usageError{fmt.Errorf("--token-file: %s holds more than %d bytes; it should hold the token alone", file, maxTokenFile)}
		}
		token := strings.TrimSpace(string(b))
		if token == "" || strings.ContainsAny(token, "\r\n") {
			return "", usageError{fmt.Errorf("--token-file: %s should hold the token alone, on one line", file)}
		}
		return token, nil
	case flag != "":
		fmt.Fprintf(warn, "segtool: --token is visible to every user of this machine (ps, /proc); use --token-file or %s instead\n", tokenEnv)
		return flag, nil
	}
	return os.Getenv(tokenEnv), nil
}
