// Package secret judges whether a shared secret (the JWT HMAC secret, an envelope signing key) is strong
// enough to use: long enough and varied enough that it was not typed as a placeholder.
package secret

import (
	"fmt"
	"math"
)

// Minimums of a secret.
const (
	// MinBytes is the shortest secret accepted: 256 bits, the size of an HMAC-SHA256 output.
	MinBytes = 32
	// MinDistinct bytes, and MinEntropyBits estimated from the byte frequencies (Shannon entropy times
	// length): a random secret of MinBytes in hex (~4 bits a byte) or base64 (~6) passes easily, while
	// "aaaa…", "abab…" or a short word repeated do not.
	MinDistinct    = 8
	MinEntropyBits = 128
)

// Check returns nil when s is strong enough, else an error naming what is wrong (never repeating s).
func Check(s []byte) error {
	if len(s) < MinBytes {
		return fmt.Errorf("is %d bytes; at least %d are required", len(s), MinBytes)
	}
	var counts [256]int
	distinct := 0
	for _, b := range s {
		if counts[b] == 0 {
			distinct++
		}
		counts[b]++
	}
	if distinct < MinDistinct {
		return fmt.Errorf("uses only %d distinct characters; use a random value (e.g. openssl rand -base64 32)", distinct)
	}
	if p := period(s); p > 0 {
		return fmt.Errorf("repeats a %d-character pattern; use a random value (e.g. openssl rand -base64 32)", p)
	}
	if bits := EntropyBits(s); bits < MinEntropyBits {
		return fmt.Errorf("is too predictable (about %.0f bits, at least %d needed); use a random value (e.g. openssl rand -base64 32)", bits, MinEntropyBits)
	}
	if p := nearPeriod(s); p > 0 {
		return fmt.Errorf("mostly repeats a %d-character pattern; use a random value (e.g. openssl rand -base64 32)", p)
	}
	if p := nearPeriod(deltas(s)); p > 0 {
		return fmt.Errorf("follows a regular sequence (like abcd… or 0246…); use a random value (e.g. openssl rand -base64 32)")
	}
	return nil
}

// period returns the length of the shortest pattern s is made of when s repeats it at least twice
// ("abcabcab" → 3), 0 otherwise: a short word typed over and over has more distinct characters and
// more per-character entropy than it has information.
func period(s []byte) int {
	for p := 1; p <= len(s)/2; p++ {
		if string(s[p:]) == string(s[:len(s)-p]) {
			return p
		}
	}
	return 0
}

// nearPeriod is period for a pattern repeated with a few bytes changed, added or cut ("0123…f0123…f!",
// a word typed three times with one typo): the shortest p for which at least three quarters of the
// bytes equal the byte p further on, over at least minCompared comparisons (so chance matches of a
// random secret, 1 in 16 for hex, cannot reach it). 0 when there is none.
func nearPeriod(s []byte) int {
	const minCompared = 16
	for p := 1; len(s)-p >= minCompared; p++ {
		same := 0
		for i := 0; i+p < len(s); i++ {
			if s[i] == s[i+p] {
				same++
			}
		}
		if 4*same >= 3*(len(s)-p) {
			return p
		}
	}
	return 0
}

// deltas returns the differences between neighbouring bytes: a run like "abcdef…" or "0246…", whose
// bytes all differ, is a constant (so periodic) sequence of differences.
func deltas(s []byte) []byte {
	if len(s) < 2 {
		return nil
	}
	d := make([]byte, len(s)-1)
	for i := range d {
		d[i] = s[i+1] - s[i]
	}
	return d
}

// EntropyBits estimates the information in s from its byte frequencies: a bound above what an attacker
// who knows the alphabet must guess, good enough to refuse placeholders.
func EntropyBits(s []byte) float64 {
	if len(s) == 0 {
		return 0
	}
	var counts [256]int
	for _, b := range s {
		counts[b]++
	}
	n := float64(len(s))
	h := 0.0
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h * n
}
