package cli

import (
	"fmt"

	"golang.org/x/sys/windows"
)

// kernelRelease is the running Windows version and build.
func kernelRelease() string {
	v := windows.RtlGetVersion()
	return fmt.Sprintf("Windows %d.%d.%d", v.MajorVersion, v.MinorVersion, v.BuildNumber)
}
