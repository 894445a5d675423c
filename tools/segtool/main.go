// Command segtool inspects, verifies and exercises segstore logs. Run
// `segtool --help` for the commands and the exit statuses.
package main

import (
	"os"

	"github.com/segstore/segstore/tools"
)

func main() {
	os.Exit(tools.Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
