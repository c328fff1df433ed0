package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// Mistakes on the command line are usage errors (exit 2), found before anything is connected to.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no mode"},
		{[]string{"bogus"}, "unknown mode"},
		{[]string{"ceiling", "-db", "d", "-records", "10"}, "-mongo is required"},
		{[]string{"ceiling", "-mongo", "mongodb://x/", "-records", "10"}, "-db is required"},
		{[]string{"ceiling", "-mongo", "mongodb://x/", "-db", "d"}, "-records must be positive"},
		{[]string{"ceiling", "-mongo", "mongodb://x/", "-db", "d", "-records", "10", "-chunk", "0"}, "-chunk must be positive"},
		{[]string{"consumer", "-mongo", "mongodb://x/", "-db", "d", "-records", "10"}, "-brokers and -group are required"},
		{[]string{"consumer", "-brokers", "b:1", "-group", "g", "-mongo", "mongodb://x/", "-db", "d", "-records", "10", "-batch", "0"}, "-batch must be positive"},
		{[]string{"consumer", "-nope"}, "flag provided but not defined"},
		{[]string{"ceiling", "-mongo", "mongodb://x/", "-db", "d", "-records", "10", "extra"}, "unexpected arguments"},
	} {
		err := run(tc.args, time.Now(), io.Discard)
		var usage usageError
		if !errors.As(err, &usage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want a usage error with %q", tc.args, err, tc.want)
		}
	}
}
