package ingest

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel kill cmd if the benchmark dies without stopping it (e.g. a -timeout
// panic), so no server or pipeline is left behind holding a port.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
