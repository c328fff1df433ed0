package envelope

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheckID(t *testing.T) {
	for _, tc := range []struct {
		name    string
		id      string
		wantErr string // "" when valid, else a fragment of the error
	}{
		// Valid.
		{"ascii", "user-42", ""},
		{"one byte", "a", ""},
		{"punctuation and symbols", "tenant_a.b:c/d@e+f=g~h|i$j", ""},
		{"ascii space inside", "Jane Doe", ""},
		{"ascii space only", " ", ""},
		{"leading and trailing ascii space", " padded ", ""},
		{"latin letters with diacritics", "Ünïcödé", ""},
		{"combining mark", "e\u0301", ""},
		{"cjk", "日本語", ""},
		{"greek", "Ελληνικά", ""},
		{"cyrillic", "ключ", ""},
		{"arabic", "مرحبا", ""},
		{"arabic-indic digits", "٠١٢٣", ""},
		{"emoji", "👍🏽", ""},
		{"exactly 128 ascii bytes", strings.Repeat("x", MaxIDBytes), ""},
		{"exactly 128 bytes ending in a 2-byte rune", strings.Repeat("x", MaxIDBytes-2) + "é", ""},
		{"exactly 128 bytes of 4-byte runes", strings.Repeat("😀", MaxIDBytes/4), ""},
		{"a ULID", "01ARZ3NDEKTSV4RRFFQ69G5FAV", ""},

		// Length.
		{"empty", "", "must not be empty"},
		{"129 ascii bytes", strings.Repeat("x", MaxIDBytes+1), "at most 128 bytes (got 129)"},
		{"129 bytes ending in a 2-byte rune", strings.Repeat("x", MaxIDBytes-1) + "é", "at most 128 bytes (got 129)"},
		{"132 bytes of 4-byte runes", strings.Repeat("😀", MaxIDBytes/4+1), "at most 128 bytes (got 132)"},
		{"huge", strings.Repeat("x", 1<<20), "at most 128 bytes"},

		// UTF-8.
		{"invalid byte", "\xff", "must be UTF-8"},
		{"invalid byte inside", "user\xfe42", "must be UTF-8"},
		{"truncated sequence", "caf\xc3", "must be UTF-8"},
		{"overlong encoding of '/'", "a\xc0\xafb", "must be UTF-8"},
		{"encoded surrogate", "a\xed\xa0\x80", "must be UTF-8"},
		{"beyond U+10FFFF", "a\xf4\x90\x80\x80", "must be UTF-8"},

		// C0 controls and DEL.
		{"NUL", "a\x00b", "must be printable"},
		{"tab", "a\tb", "must be printable"},
		{"newline", "a\nb", "must be printable"},
		{"carriage return", "user\r", "must be printable"},
		{"escape", "\x1b[31mred", "must be printable"},
		{"unit separator", "a\x1fb", "must be printable"},
		{"DEL U+007F", "a\u007fb", "must be printable"},

		// C1 controls.
		{"U+0080", "a\u0080b", "must be printable"},
		{"NEL U+0085", "a\u0085b", "must be printable"},
		{"CSI U+009B", "a\u009bb", "must be printable"},
		{"U+009F", "a\u009fb", "must be printable"},

		// Invisible format characters (Cf).
		{"zero-width space U+200B", "ad\u200bmin", "must be printable"},
		{"zero-width non-joiner U+200C", "a\u200cb", "must be printable"},
		{"zero-width joiner U+200D", "a\u200db", "must be printable"},
		{"left-to-right mark U+200E", "a\u200eb", "must be printable"},
		{"right-to-left mark U+200F", "a\u200fb", "must be printable"},
		{"right-to-left override U+202E", "user\u202egnp.exe", "must be printable"},
		{"word joiner U+2060", "a\u2060b", "must be printable"},
		{"invisible times U+2062", "a\u2062b", "must be printable"},
		{"byte order mark U+FEFF", "\ufeffadmin", "must be printable"},
		{"soft hyphen U+00AD", "ad\u00admin", "must be printable"},
		{"arabic letter mark U+061C", "a\u061cb", "must be printable"},
		{"mongolian vowel separator U+180E", "a\u180eb", "must be printable"},
		{"interlinear annotation U+FFF9", "a\ufff9b", "must be printable"},
		{"tag character U+E0041", "a\U000e0041b", "must be printable"},

		// Separators other than the ASCII space.
		{"no-break space U+00A0", "Jane\u00a0Doe", "must be printable"},
		{"ideographic space U+3000", "a\u3000b", "must be printable"},
		{"en quad U+2000", "a\u2000b", "must be printable"},
		{"line separator U+2028", "a\u2028b", "must be printable"},
		{"paragraph separator U+2029", "a\u2029b", "must be printable"},

		// Other non-printable.
		{"private use U+E000", "a\ue000b", "must be printable"},
		{"noncharacter U+FFFF", "a\uffffb", "must be printable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckID(tc.id)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckID(%q) = %v, want nil", tc.id, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckID(%q) = nil, want an error with %q", tc.id, tc.wantErr)
			}
			if !errors.Is(err, ErrInvalidID) {
				t.Errorf("CheckID error %v does not wrap ErrInvalidID", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CheckID(%q) = %q, want it to say %q", tc.id, err, tc.wantErr)
			}
		})
	}
}

func TestCheckIDErrorNeverRepeatsTheID(t *testing.T) {
	const marker = "Zq9Marker"
	for _, id := range []string{
		strings.Repeat(marker, 20),
		marker + "\xff",
		marker + "\x00",
		marker + "\u200b",
		marker + "\u0085",
	} {
		err := CheckID(id)
		if err == nil {
			t.Fatalf("CheckID(%q) = nil, want an error", id)
		}
		if strings.Contains(err.Error(), marker) {
			t.Errorf("CheckID error %q repeats the id", err)
		}
	}
}

// TestRegressionCheckIDInvisibleNonFormat: CheckID means to refuse characters that "would let two
// different ids look the same in a log or a UI", but it tests unicode.IsPrint, which is true for every
// letter and mark, including default-ignorable characters that render as nothing. So "admin" and
// "admin\u034f" (or "admin\u3164") are two distinct, accepted ids that look identical.
func TestRegressionCheckIDInvisibleNonFormat(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   string
	}{
		{"combining grapheme joiner U+034F (Mn)", "admin\u034f"},
		{"variation selector-16 U+FE0F (Mn)", "admin\ufe0f"},
		{"variation selector-17 U+E0100 (Mn)", "admin\U000e0100"},
		{"hangul filler U+3164 (Lo)", "admin\u3164"},
		{"hangul choseong filler U+115F (Lo)", "admin\u115f"},
		{"hangul jungseong filler U+1160 (Lo)", "admin\u1160"},
		{"halfwidth hangul filler U+FFA0 (Lo)", "admin\uffa0"},
		{"khmer vowel inherent aq U+17B4 (Mn)", "admin\u17b4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := CheckID(tc.id); err == nil {
				t.Errorf("CheckID(%q) = nil: an id that renders exactly like %q is accepted", tc.id, "admin")
			}
		})
	}
}

func TestCheckBody(t *testing.T) {
	for _, tc := range []struct {
		name    string
		body    string
		wantErr string // "" when valid
	}{
		{"ascii", "hello", ""},
		{"one character", "x", ""},
		{"multi-line", "line one\nline two\n\ttabbed", ""},
		{"surrounding space is fine", "  hello  ", ""},
		{"decomposed accents", "cafe\u0301", ""},
		{"emoji", "🎉 party", ""},
		{"exactly MaxBodyBytes ascii", strings.Repeat("a", MaxBodyBytes), ""},
		{"exactly MaxBodyBytes of 2-byte runes", strings.Repeat("é", MaxBodyBytes/2), ""},
		{"exactly MaxBodyBytes of 3-byte runes", strings.Repeat("€", MaxBodyBytes/3) + "a", ""},
		{"exactly MaxBodyBytes of 4-byte runes", strings.Repeat("😀", MaxBodyBytes/4), ""},
		{"exactly MaxBodyBytes with trailing space", strings.Repeat("a", MaxBodyBytes-2) + "  ", ""},
		// NFC composes e + U+0301 (3 bytes) into U+00E9 (2 bytes): shrinks, stays valid.
		{"NFC shrinking at the max", strings.Repeat("e\u0301", MaxBodyBytes/3), ""},

		{"empty", "", "must not be empty"},
		{"spaces", "   ", "must not be empty"},
		{"ascii white space", " \t\r\n\v\f ", "must not be empty"},
		{"unicode white space", "\u00a0\u2028\u3000\u0085\u2003", "must not be empty"},
		{"MaxBodyBytes of spaces", strings.Repeat(" ", MaxBodyBytes), "must not be empty"},
		{"one byte over", strings.Repeat("a", MaxBodyBytes+1), "at most 16384 bytes (got 16385)"},
		{"over max of 2-byte runes", strings.Repeat("é", MaxBodyBytes/2+1), "at most 16384 bytes (got 16386)"},
		{"over max as sent though it trims to less", "a" + strings.Repeat(" ", MaxBodyBytes), "at most 16384 bytes"},
		{"huge", strings.Repeat("a", 10<<20), "at most 16384 bytes"},
		// U+0958 is a composition exclusion: NFC decomposes it to U+0915 U+093C, 3 bytes to 6.
		{"NFC expansion past the max", strings.Repeat("\u0958", MaxBodyBytes/3), "once normalised to NFC (got 32766)"},
		{"NFC expansion just past the max", strings.Repeat("a", MaxBodyBytes-3) + "\u0958", "once normalised to NFC (got 16387)"},
		{"invalid byte", "\xff", "must be UTF-8"},
		{"invalid byte inside", "hello \xfe world", "must be UTF-8"},
		{"truncated sequence", "caf\xc3", "must be UTF-8"},
		{"encoded surrogate", "\xed\xa0\x80", "must be UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckBody(tc.body)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckBody = %v, want nil", err)
				}
				if n := NormalizeBody(tc.body); len(n) > MaxBodyBytes || n == "" || !utf8.ValidString(n) {
					t.Errorf("accepted body normalises to %d bytes (valid UTF-8: %v)", len(n), utf8.ValidString(n))
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckBody = nil, want an error with %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CheckBody = %q, want it to say %q", err, tc.wantErr)
			}
		})
	}
}

func TestNormalizeBody(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"hello", "hello"},
		{"  hello \n", "hello"},
		{"e\u0301", "\u00e9"},
		{"\u00e9", "\u00e9"},
		{"\u0958", "\u0915\u093c"},
		{"\u212b", "\u00c5"}, // ANGSTROM SIGN → A WITH RING ABOVE
		{"a\u0323\u0307", "\u1ea1\u0307"},
		{"\u00a0x\u3000", "x"},
		{"", ""},
		{" \t ", ""},
	} {
		if got := NormalizeBody(tc.in); got != tc.want {
			t.Errorf("NormalizeBody(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := NormalizeBody(NormalizeBody(tc.in)); got != tc.want {
			t.Errorf("NormalizeBody is not idempotent on %q: %q", tc.in, got)
		}
	}
}

func TestCheckRoles(t *testing.T) {
	roles := func(n int) []string {
		rs := make([]string, n)
		for i := range rs {
			rs[i] = "role-" + strings.Repeat("x", i)
		}
		return rs
	}
	for _, tc := range []struct {
		name       string
		roles      []string
		wantErr    string // "" when valid
		wantInvaID bool   // the error wraps ErrInvalidID
	}{
		{"nil", nil, "", false},
		{"empty list", []string{}, "", false},
		{"one", []string{"admin"}, "", false},
		{"several", []string{"admin", "member", "tenant:owner"}, "", false},
		{"duplicates are not refused", []string{"admin", "admin"}, "", false},
		{"with space", []string{"support agent"}, "", false},
		{"unicode", []string{"modérateur"}, "", false},
		{"MaxRoles", roles(MaxRoles), "", false},
		{"role of MaxRoleBytes", []string{strings.Repeat("r", MaxRoleBytes)}, "", false},

		{"one too many", roles(MaxRoles + 1), "at most 16 roles (got 17)", false},
		{"far too many", roles(1000), "at most 16 roles (got 1000)", false},
		{"role one byte too long", []string{strings.Repeat("r", MaxRoleBytes+1)}, "at most 64 bytes", false},
		{"role too long after a good one", []string{"admin", strings.Repeat("é", MaxRoleBytes/2+1)}, "at most 64 bytes", false},
		{"empty role", []string{""}, "must not be empty", true},
		{"empty role after a good one", []string{"admin", ""}, "must not be empty", true},
		{"control character", []string{"ad\x00min"}, "must be printable", true},
		{"newline", []string{"admin\n"}, "must be printable", true},
		{"zero-width space", []string{"ad\u200bmin"}, "must be printable", true},
		{"invalid UTF-8", []string{"adm\xffin"}, "must be UTF-8", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckRoles(tc.roles)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckRoles = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckRoles = nil, want an error with %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CheckRoles = %q, want it to say %q", err, tc.wantErr)
			}
			if got := errors.Is(err, ErrInvalidID); got != tc.wantInvaID {
				t.Errorf("errors.Is(%v, ErrInvalidID) = %v, want %v", err, got, tc.wantInvaID)
			}
		})
	}
}

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    string
		n    int
		want string
	}{
		{"shorter", "hello", 10, "hello"},
		{"exact", "hello", 5, "hello"},
		{"one over", "hello", 4, "hell…"},
		{"to one", "hello", 1, "h…"},
		{"to zero", "hello", 0, "…"},
		{"empty", "", 0, ""},
		{"empty with room", "", 5, ""},
		{"2-byte rune kept whole", "héllo", 3, "hé…"},
		{"2-byte rune not split", "héllo", 2, "h…"},
		{"3-byte runes at 4", "日本語", 4, "日…"},
		{"3-byte runes at 5", "日本語", 5, "日…"},
		{"3-byte runes at 6", "日本語", 6, "日本…"},
		{"3-byte runes at 8", "日本語", 8, "日本…"},
		{"3-byte runes exact", "日本語", 9, "日本語"},
		{"3-byte rune at 2", "日本語", 2, "…"},
		{"4-byte runes", "😀😀", 7, "😀…"},
		{"4-byte runes at 3", "😀😀", 3, "…"},
		{"combining mark cut off its base stays valid", "e\u0301e\u0301", 4, "e\u0301e…"},
		{"invalid byte within the limit", "a\xffb", 10, "a\uFFFDb"},
		{"invalid bytes in the kept part", "ab\xff\xffcd", 5, "ab\uFFFD…"},
		{"truncated sequence within the limit", "caf\xc3", 10, "caf\uFFFD"},
		{"invalid byte in the cut part", "abc\xff", 3, "abc…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Clip(tc.s, tc.n)
			if got != tc.want {
				t.Errorf("Clip(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
			}
			if !utf8.ValidString(got) {
				t.Errorf("Clip(%q, %d) = %q is not valid UTF-8", tc.s, tc.n, got)
			}
		})
	}
}

// TestClipProperties checks, for every cut point of a mix of valid strings, that Clip keeps the longest
// whole-rune prefix of at most n bytes, appends "…" exactly when it cut, and returns valid UTF-8.
func TestClipProperties(t *testing.T) {
	const ellipsis = "…"
	for _, s := range []string{
		"plain ascii text",
		"héllo wörld ça va",
		"日本語のテキスト",
		"😀a😀b😀",
		"mixed: aé日😀 end",
		"e\u0301\u0958\u200b",
		strings.Repeat("é", 100),
	} {
		for n := 0; n <= len(s)+1; n++ {
			got := Clip(s, n)
			if !utf8.ValidString(got) {
				t.Fatalf("Clip(%q, %d) = %q: invalid UTF-8", s, n, got)
			}
			if len(s) <= n {
				if got != s {
					t.Errorf("Clip(%q, %d) = %q, want it unchanged", s, n, got)
				}
				continue
			}
			if !strings.HasSuffix(got, ellipsis) {
				t.Errorf("Clip(%q, %d) = %q, want a trailing …", s, n, got)
				continue
			}
			kept := strings.TrimSuffix(got, ellipsis)
			if len(kept) > n {
				t.Errorf("Clip(%q, %d) kept %d bytes", s, n, len(kept))
			}
			if !strings.HasPrefix(s, kept) {
				t.Errorf("Clip(%q, %d) = %q is not a prefix plus …", s, n, got)
			}
			if !utf8.ValidString(kept) {
				t.Errorf("Clip(%q, %d) split a rune: %q", s, n, kept)
			}
			// Longest: the next rune would not have fit.
			_, size := utf8.DecodeRuneInString(s[len(kept):])
			if len(kept)+size <= n {
				t.Errorf("Clip(%q, %d) = %q: the next rune would have fit", s, n, got)
			}
			if len(got) > n+len(ellipsis) {
				t.Errorf("Clip(%q, %d) = %d bytes, more than n plus the ellipsis", s, n, len(got))
			}
		}
	}
}

// TestRegressionClipInvalidUTF8Grows: Clip promises "at most n bytes" (plus the "…" it appends), but it
// counts bytes before replacing invalid bytes with U+FFFD (3 bytes each), so invalid input comes out
// longer than the bound: Clip("\xffa\xffa", 4) is 8 bytes, Clip("\xff", 1) is 3.
func TestRegressionClipInvalidUTF8Grows(t *testing.T) {
	for _, tc := range []struct {
		s string
		n int
	}{
		{"\xffa\xffa", 4},
		{"\xff", 1},
		{strings.Repeat("\xffa", 600), 1024},
	} {
		if got := Clip(tc.s, tc.n); len(got) > tc.n+len("…") {
			t.Errorf("Clip(%.40q, %d) = %d bytes, want at most %d", tc.s, tc.n, len(got), tc.n+len("…"))
		}
	}
}
