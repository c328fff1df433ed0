//go:build !linux

package ingest

import "os/exec"

// killWithParent has no portable equivalent of Linux's Pdeathsig; the harness still stops its processes.
func killWithParent(*exec.Cmd) {}
