package secret

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"math"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name    string
		s       string
		wantErr string // "" when accepted, else a fragment of the error
	}{
		// Accepted.
		{"openssl rand -base64 32", "gQVgCKxQlW68x6RdECA0Q1/YoUAkakOjTARu1+uT60Y=", ""},
		{"another base64 of 32 bytes", "QUmiE0AL3cS6if3MedzIoG6gNx1U4stKd1v5r1lcsX0=", ""},
		{"base64url without padding", "5cMhyBpOS85UwFJiU8hf3g-zwqxgwXiEncip5LRG8qI", ""},
		{"openssl rand -hex 32", "666ff95dfab79a2d87797e20625557a7fce69fb3c5a205b70adf653e9fb71602", ""},
		{"devstack placeholder", "devstack-insecure-hmac-secret-change-me-0123456789", ""},
		{"32 distinct bytes, shuffled", "qZkAbWmEx0rTcLp9vNfYh2sGjD7uKe4O", ""},
		{"binary", "\x9c\x03\xe1\x5a\x77\x10\xc8\x2f\x41\xbd\x66\x08\xf3\x1e\x92\x5d\xa0\x34\xcb\x7e\x09\xee\x51\x83\x2a\xd7\x6c\x15\xb8\x40\xfa\x97", ""},
		{"long passphrase", "correct horse battery staple, with extra words for length", ""},

		// Too short.
		{"empty", "", "is 0 bytes; at least 32 are required"},
		{"one byte", "x", "is 1 bytes"},
		{"short word", "hunter2", "is 7 bytes"},
		{"31 random bytes", "gQVgCKxQlW68x6RdECA0Q1/YoUAkakO", "is 31 bytes; at least 32"},

		// Too few distinct bytes.
		{"32 × a", strings.Repeat("a", 32), "uses only 1 distinct characters"},
		{"1000 × a", strings.Repeat("a", 1000), "uses only 1 distinct characters"},
		{"abab…", strings.Repeat("ab", 16), "uses only 2 distinct characters"},
		{"long abab…", strings.Repeat("ab", 500), "uses only 2 distinct characters"},
		{"short word repeated", strings.Repeat("secret", 6), "distinct characters"},
		{"changeme repeated", strings.Repeat("changeme", 4), "uses only 7 distinct characters"},
		{"password repeated", strings.Repeat("password", 4), "uses only 7 distinct characters"},
		{"7 distinct", strings.Repeat("abcdefg", 10), "uses only 7 distinct characters"},
		{"zeros in hex", strings.Repeat("0", 64), "uses only 1 distinct characters"},

		// Enough distinct bytes, too little entropy.
		{"8 distinct repeated", strings.Repeat("abcdefgh", 4), "repeats a 8-character pattern"},
		{"skewed", strings.Repeat("a", 25) + "bcdefgh", "too predictable"},
		{"mostly one byte", strings.Repeat("x", 100) + "abcdefgh", "too predictable"},
		{"12 distinct, 32 bytes", strings.Repeat("abcdefghijkl", 2) + "abcdefgh", "repeats a 12-character pattern"},
		{"12 distinct, not periodic", "abcdefghijkl" + strings.Repeat("a", 20), "too predictable"},

		// A pattern repeated with a byte or two changed, added or cut: not periodic, and enough entropy
		// by byte frequencies alone.
		{"pattern and one more byte", strings.Repeat("abcdefghijklmnop", 2) + "q", "mostly repeats a 16-character pattern"},
		{"one byte before the pattern", "x" + strings.Repeat("0123456789abcdef", 3), "mostly repeats a 16-character pattern"},
		{"pattern with a typo", strings.Repeat("Qwertyuiop123456", 3)[:40] + "Z" + strings.Repeat("Qwertyuiop123456", 3)[41:], "mostly repeats a 16-character pattern"},

		// Sequences: every byte differs, the differences do not.
		{"alphabet", "abcdefghijklmnopqrstuvwxyz012345", "follows a regular sequence"},
		{"alphabet, both cases", "abcdefghijklmnopqrstuvwxyzABCDEF", "follows a regular sequence"},
		{"binary counter", "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f", "follows a regular sequence"},
		{"every other letter", "acegikmoqsuwyACEGIKMOQSUWY02468!", "follows a regular sequence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check([]byte(tc.s))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Check = %v, want nil (%.1f bits)", err, EntropyBits([]byte(tc.s)))
				}
				return
			}
			if err == nil {
				t.Fatalf("Check = nil, want an error with %q (%.1f bits)", tc.wantErr, EntropyBits([]byte(tc.s)))
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Check = %q, want it to say %q", err, tc.wantErr)
			}
			if len(tc.s) >= 4 && strings.Contains(err.Error(), tc.s) {
				t.Errorf("error %q repeats the secret", err)
			}
			if len(tc.s) >= 8 && strings.Contains(err.Error(), tc.s[:8]) {
				t.Errorf("error %q repeats the start of the secret", err)
			}
		})
	}
}

// TestCheckRandom: what the error messages recommend always passes.
func TestCheckRandom(t *testing.T) {
	for i := range 200 {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			t.Fatal(err)
		}
		for name, s := range map[string]string{
			"base64":    base64.StdEncoding.EncodeToString(raw),
			"base64url": base64.RawURLEncoding.EncodeToString(raw),
			"hex":       hex.EncodeToString(raw),
			"raw":       string(raw),
		} {
			if err := Check([]byte(s)); err != nil {
				t.Fatalf("run %d: Check of a random %s secret: %v (%.1f bits)", i, name, err, EntropyBits([]byte(s)))
			}
		}
	}
}

func TestCheckErrorNeverContainsSecret(t *testing.T) {
	for _, s := range []string{
		"Tr0ub4dor&3",
		strings.Repeat("Zq", 40),
		strings.Repeat("Qwertyui", 4),
		strings.Repeat("Q", 31),
		"p@ss",
	} {
		err := Check([]byte(s))
		if err == nil {
			t.Fatalf("Check(%q) = nil, want an error", s)
		}
		for _, part := range []string{s, s[:min(len(s), 4)]} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("error %q contains %q of the secret", err, part)
			}
		}
	}
}

func TestEntropyBits(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	for _, tc := range []struct {
		name string
		s    []byte
		want float64
	}{
		{"nil", nil, 0},
		{"empty", []byte{}, 0},
		{"one byte", []byte("a"), 0},
		{"one symbol", []byte(strings.Repeat("a", 32)), 0},
		{"two symbols evenly", []byte(strings.Repeat("ab", 16)), 32},
		{"four symbols evenly", []byte(strings.Repeat("abcd", 8)), 64},
		{"eight symbols evenly", []byte(strings.Repeat("abcdefgh", 4)), 96},
		{"sixteen symbols evenly", []byte(strings.Repeat("0123456789abcdef", 2)), 128},
		{"every byte once", all, 2048},
		{"3:1", []byte("aaab"), 4 * (-(0.75*math.Log2(0.75) + 0.25*math.Log2(0.25)))},
	} {
		if got := EntropyBits(tc.s); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: EntropyBits = %v, want %v", tc.name, got, tc.want)
		}
	}
	// Order does not matter, only frequencies.
	if a, b := EntropyBits([]byte("aabbccdd")), EntropyBits([]byte("dcbadcba")); math.Abs(a-b) > 1e-9 {
		t.Errorf("EntropyBits depends on order: %v vs %v", a, b)
	}
}

// TestRegressionCheckShortWordRepeated: the package comment says "a short word repeated" does not pass,
// but Check only counts byte frequencies, so a word of 10 to 16 distinct characters repeated until
// 32 bytes does pass.
func TestRegressionCheckShortWordRepeated(t *testing.T) {
	for _, s := range []string{
		strings.Repeat("0123456789abcdef", 2),
		strings.Repeat("0123456789", 4),
		strings.Repeat("qwertyuiop", 4),
		strings.Repeat("abcdefghijkl", 3),
	} {
		if err := Check([]byte(s)); err == nil {
			t.Errorf("Check(%q) = nil (%.1f bits), want it refused as a short word repeated", s, EntropyBits([]byte(s)))
		}
	}
}
