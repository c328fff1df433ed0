//go:build !linux

package testenv

import "os/exec"

// killWithParent has no portable equivalent of Linux's Pdeathsig; t.Cleanup still stops the process.
func killWithParent(*exec.Cmd) {}
