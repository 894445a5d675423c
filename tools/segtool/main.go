// Command segtool inspects, verifies and exercises segstore logs. Run
// `segtool --help` for the commands and the exit statuses.
package main

import (
	"os"

	"github.com/segstore/segstore/tools/internal/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
