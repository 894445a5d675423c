// Command segtool inspects, verifies and exercises segstore logs. Run
// `segtool --help` for the commands.
package main

import (
	"fmt"
	"os"

	"github.com/segstore/segstore/tools"
)

func main() {
	if err := tools.NewRootCommand(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "segtool:", err)
		os.Exit(tools.ExitCode(err))
	}
}
