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
