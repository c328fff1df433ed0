package envelope

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

const testULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"

// validMessage has every field set, each valid.
func validMessage() *platformv1.InboundMessage {
	return &platformv1.InboundMessage{
		Id:              testULID,
		TenantId:        "tenant-1",
		ConversationId:  "conv-1",
		SenderId:        "user-1",
		SenderRoles:     []string{"member", "moderator"},
		Body:            "hello, world",
		ClientMessageId: "client-msg-1",
		Metadata:        map[string]string{"lang": "en", "client": "web"},
		RequestId:       "req-1",
		SendTime:        timestamppb.New(time.Date(2025, 3, 4, 5, 6, 7, 8e6, time.UTC)),
	}
}

func manyMetadata(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%02d", i)] = "v"
	}
	return m
}

func violationFields(vs []Violation) []string {
	fs := make([]string, len(vs))
	for i, v := range vs {
		fs[i] = v.Field
	}
	return fs
}

func TestValidateAcceptsValid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(m *platformv1.InboundMessage)
	}{
		{"every field set", func(*platformv1.InboundMessage) {}},
		{"only the required fields", func(m *platformv1.InboundMessage) {
			*m = platformv1.InboundMessage{Id: testULID, TenantId: "t", ConversationId: "c", SenderId: "u", Body: "b"}
		}},
		{"lower-case ULID", func(m *platformv1.InboundMessage) { m.Id = strings.ToLower(testULID) }},
		{"largest ULID", func(m *platformv1.InboundMessage) { m.Id = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ" }},
		{"ids of MaxIDBytes", func(m *platformv1.InboundMessage) {
			m.TenantId = strings.Repeat("t", MaxIDBytes)
			m.ConversationId = strings.Repeat("c", MaxIDBytes)
			m.SenderId = strings.Repeat("u", MaxIDBytes)
			m.RequestId = strings.Repeat("r", MaxIDBytes)
		}},
		{"unicode ids", func(m *platformv1.InboundMessage) { m.TenantId, m.SenderId = "société", "用户" }},
		{"no roles", func(m *platformv1.InboundMessage) { m.SenderRoles = nil }},
		{"MaxRoles roles", func(m *platformv1.InboundMessage) {
			m.SenderRoles = make([]string, MaxRoles)
			for i := range m.SenderRoles {
				m.SenderRoles[i] = fmt.Sprint("r", i)
			}
		}},
		{"body of MaxBodyBytes", func(m *platformv1.InboundMessage) { m.Body = strings.Repeat("b", MaxBodyBytes) }},
		{"body with surrounding space", func(m *platformv1.InboundMessage) { m.Body = "\n hi \n" }},
		{"no client_message_id", func(m *platformv1.InboundMessage) { m.ClientMessageId = "" }},
		{"client_message_id of MaxClientMessageIDBytes", func(m *platformv1.InboundMessage) {
			m.ClientMessageId = strings.Repeat("c", MaxClientMessageIDBytes)
		}},
		{"client_message_id with control characters", func(m *platformv1.InboundMessage) { m.ClientMessageId = "a\tb" }},
		{"no metadata", func(m *platformv1.InboundMessage) { m.Metadata = nil }},
		{"MaxMetadata entries", func(m *platformv1.InboundMessage) { m.Metadata = manyMetadata(MaxMetadata) }},
		{"metadata key of MaxMetadataKey", func(m *platformv1.InboundMessage) {
			m.Metadata = map[string]string{strings.Repeat("k", MaxMetadataKey): "v"}
		}},
		{"metadata value of MaxMetadataValue", func(m *platformv1.InboundMessage) {
			m.Metadata = map[string]string{"k": strings.Repeat("v", MaxMetadataValue)}
		}},
		{"empty metadata value", func(m *platformv1.InboundMessage) { m.Metadata = map[string]string{"k": ""} }},
		{"no request_id", func(m *platformv1.InboundMessage) { m.RequestId = "" }},
		{"no send_time", func(m *platformv1.InboundMessage) { m.SendTime = nil }},
		{"send_time at the epoch", func(m *platformv1.InboundMessage) { m.SendTime = &timestamppb.Timestamp{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := validMessage()
			tc.mutate(m)
			if err := Validate(m); err != nil {
				t.Fatalf("Validate = %v, want nil", err)
			}
		})
	}
}

func TestValidateRules(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mutate     func(m *platformv1.InboundMessage)
		wantFields []string
		wantText   string // a fragment of the first violation's description
	}{
		{"id empty", func(m *platformv1.InboundMessage) { m.Id = "" }, []string{"id"}, "want a ULID"},
		{"id not a ULID", func(m *platformv1.InboundMessage) { m.Id = "not-a-ulid" }, []string{"id"}, "want a ULID"},
		{"id a UUID", func(m *platformv1.InboundMessage) { m.Id = "123e4567-e89b-12d3-a456-426614174000" }, []string{"id"}, "want a ULID"},
		{"id one character short", func(m *platformv1.InboundMessage) { m.Id = testULID[1:] }, []string{"id"}, "want a ULID"},
		{"id one character long", func(m *platformv1.InboundMessage) { m.Id = testULID + "0" }, []string{"id"}, "want a ULID"},
		{"id with a letter outside Crockford base32", func(m *platformv1.InboundMessage) { m.Id = "01ARZ3NDEKTSV4RRFFQ69G5FAU" }, []string{"id"}, "want a ULID"},
		{"id overflowing 128 bits", func(m *platformv1.InboundMessage) { m.Id = "8ZZZZZZZZZZZZZZZZZZZZZZZZZ" }, []string{"id"}, "want a ULID"},

		{"tenant_id empty", func(m *platformv1.InboundMessage) { m.TenantId = "" }, []string{"tenant_id"}, "must not be empty"},
		{"tenant_id too long", func(m *platformv1.InboundMessage) { m.TenantId = strings.Repeat("t", MaxIDBytes+1) }, []string{"tenant_id"}, "at most 128 bytes"},
		{"tenant_id control character", func(m *platformv1.InboundMessage) { m.TenantId = "t\x00" }, []string{"tenant_id"}, "must be printable"},
		{"tenant_id zero-width space", func(m *platformv1.InboundMessage) { m.TenantId = "t\u200b" }, []string{"tenant_id"}, "must be printable"},
		{"conversation_id empty", func(m *platformv1.InboundMessage) { m.ConversationId = "" }, []string{"conversation_id"}, "must not be empty"},
		{"conversation_id too long", func(m *platformv1.InboundMessage) { m.ConversationId = strings.Repeat("c", MaxIDBytes+1) }, []string{"conversation_id"}, "at most 128 bytes"},
		{"conversation_id C1 control", func(m *platformv1.InboundMessage) { m.ConversationId = "c\u0085" }, []string{"conversation_id"}, "must be printable"},
		{"sender_id empty", func(m *platformv1.InboundMessage) { m.SenderId = "" }, []string{"sender_id"}, "must not be empty"},
		{"sender_id too long", func(m *platformv1.InboundMessage) { m.SenderId = strings.Repeat("u", MaxIDBytes+1) }, []string{"sender_id"}, "at most 128 bytes"},
		{"sender_id newline", func(m *platformv1.InboundMessage) { m.SenderId = "user\nadmin" }, []string{"sender_id"}, "must be printable"},

		{"sender_roles too many", func(m *platformv1.InboundMessage) { m.SenderRoles = make([]string, MaxRoles+1) }, []string{"sender_roles"}, "at most 16 roles"},
		{"sender_roles empty role", func(m *platformv1.InboundMessage) { m.SenderRoles = []string{"member", ""} }, []string{"sender_roles"}, "must not be empty"},
		{"sender_roles role too long", func(m *platformv1.InboundMessage) { m.SenderRoles = []string{strings.Repeat("r", MaxRoleBytes+1)} }, []string{"sender_roles"}, "at most 64 bytes"},
		{"sender_roles invisible character", func(m *platformv1.InboundMessage) { m.SenderRoles = []string{"ad\u200bmin"} }, []string{"sender_roles"}, "must be printable"},

		{"body empty", func(m *platformv1.InboundMessage) { m.Body = "" }, []string{"body"}, "must not be empty"},
		{"body white space", func(m *platformv1.InboundMessage) { m.Body = " \n\t\u3000" }, []string{"body"}, "must not be empty"},
		{"body too long", func(m *platformv1.InboundMessage) { m.Body = strings.Repeat("b", MaxBodyBytes+1) }, []string{"body"}, "at most 16384 bytes"},
		{"body too long once normalised", func(m *platformv1.InboundMessage) { m.Body = strings.Repeat("\u0958", MaxBodyBytes/3) }, []string{"body"}, "once normalised"},
		{"body invalid UTF-8", func(m *platformv1.InboundMessage) { m.Body = "hi\xff" }, []string{"body"}, "must be UTF-8"},

		{"client_message_id too long", func(m *platformv1.InboundMessage) {
			m.ClientMessageId = strings.Repeat("c", MaxClientMessageIDBytes+1)
		}, []string{"client_message_id"}, "at most 128 bytes"},
		{"client_message_id invalid UTF-8", func(m *platformv1.InboundMessage) { m.ClientMessageId = "c\xff" }, []string{"client_message_id"}, "must be UTF-8"},

		{"metadata too many entries", func(m *platformv1.InboundMessage) { m.Metadata = manyMetadata(MaxMetadata + 1) }, []string{"metadata"}, "at most 16 entries (got 17)"},
		{"metadata empty key", func(m *platformv1.InboundMessage) { m.Metadata = map[string]string{"": "v"} }, []string{"metadata"}, "keys are 1 to 64 bytes"},
		{"metadata key too long", func(m *platformv1.InboundMessage) {
			m.Metadata = map[string]string{strings.Repeat("k", MaxMetadataKey+1): "v"}
		}, []string{"metadata"}, "keys are 1 to 64 bytes"},
		{"metadata key invalid UTF-8", func(m *platformv1.InboundMessage) { m.Metadata = map[string]string{"k\xff": "v"} }, []string{"metadata"}, "keys are 1 to 64 bytes of UTF-8"},
		{"metadata value too long", func(m *platformv1.InboundMessage) {
			m.Metadata = map[string]string{"lang": strings.Repeat("v", MaxMetadataValue+1)}
		}, []string{"metadata[lang]"}, "at most 512 bytes"},
		{"metadata value invalid UTF-8", func(m *platformv1.InboundMessage) { m.Metadata = map[string]string{"lang": "e\xffn"} }, []string{"metadata[lang]"}, "of UTF-8"},

		{"request_id too long", func(m *platformv1.InboundMessage) { m.RequestId = strings.Repeat("r", MaxIDBytes+1) }, []string{"request_id"}, "at most 128 bytes"},
		{"request_id control character", func(m *platformv1.InboundMessage) { m.RequestId = "req\x1b[0m" }, []string{"request_id"}, "must be printable"},
		{"request_id invalid UTF-8", func(m *platformv1.InboundMessage) { m.RequestId = "r\xff" }, []string{"request_id"}, "must be UTF-8"},

		{"send_time negative nanos", func(m *platformv1.InboundMessage) { m.SendTime = &timestamppb.Timestamp{Seconds: 1, Nanos: -1} }, []string{"send_time"}, ""},
		{"send_time nanos overflow", func(m *platformv1.InboundMessage) { m.SendTime = &timestamppb.Timestamp{Nanos: 1e9} }, []string{"send_time"}, ""},
		{"send_time before year 1", func(m *platformv1.InboundMessage) { m.SendTime = &timestamppb.Timestamp{Seconds: -62135596801} }, []string{"send_time"}, ""},
		{"send_time after year 9999", func(m *platformv1.InboundMessage) { m.SendTime = &timestamppb.Timestamp{Seconds: 253402300800} }, []string{"send_time"}, ""},

		{"several rules at once, in field order", func(m *platformv1.InboundMessage) {
			m.Id, m.TenantId, m.ConversationId, m.SenderId = "x", "", "c\x00", strings.Repeat("u", 200)
			m.SenderRoles = []string{""}
			m.Body = ""
			m.ClientMessageId = strings.Repeat("c", 200)
			m.Metadata = manyMetadata(MaxMetadata + 1)
			m.Metadata[""] = "v"
			m.Metadata["big"] = strings.Repeat("v", MaxMetadataValue+1)
			m.RequestId = "r\n"
			m.SendTime = &timestamppb.Timestamp{Nanos: -5}
		}, []string{"id", "tenant_id", "conversation_id", "sender_id", "sender_roles", "body", "client_message_id",
			"metadata", "metadata", "metadata[big]", "request_id", "send_time"}, "want a ULID"},
		{"nil fields of an empty message", func(m *platformv1.InboundMessage) { *m = platformv1.InboundMessage{} },
			[]string{"id", "tenant_id", "conversation_id", "sender_id", "body"}, "want a ULID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := validMessage()
			tc.mutate(m)
			err := Validate(m)
			if err == nil {
				t.Fatalf("Validate = nil, want violations of %v", tc.wantFields)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("Validate returned %T, want *InvalidError", err)
			}
			if got := violationFields(ie.Violations); !slices.Equal(got, tc.wantFields) {
				t.Errorf("violations of %v, want %v (error: %v)", got, tc.wantFields, err)
			}
			if !slices.Equal(Violations(err), ie.Violations) {
				t.Errorf("Violations(err) = %v, want %v", Violations(err), ie.Violations)
			}
			if !slices.Equal(Violations(fmt.Errorf("send: %w", err)), ie.Violations) {
				t.Error("Violations does not see through wrapping")
			}
			if tc.wantText != "" && !strings.Contains(ie.Violations[0].Description, tc.wantText) {
				t.Errorf("description %q, want it to say %q", ie.Violations[0].Description, tc.wantText)
			}
			for _, v := range ie.Violations {
				if v.Description == "" {
					t.Errorf("violation of %s has no description", v.Field)
				}
				if strings.HasPrefix(v.Description, ErrInvalidID.Error()) {
					t.Errorf("description %q repeats the %q prefix", v.Description, ErrInvalidID)
				}
				if !strings.Contains(err.Error(), v.Field+": "+v.Description) {
					t.Errorf("error text %q misses %s: %s", err, v.Field, v.Description)
				}
			}
			if !strings.HasPrefix(err.Error(), ErrInvalid.Error()+": ") {
				t.Errorf("error text %q does not start with %q", err, ErrInvalid)
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	err := Validate(nil)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate(nil) = %v, want ErrInvalid", err)
	}
	if got, want := violationFields(Violations(err)), []string{"id", "tenant_id", "conversation_id", "sender_id", "body"}; !slices.Equal(got, want) {
		t.Errorf("Validate(nil) violations %v, want %v", got, want)
	}
}

func TestViolationsOfOtherErrors(t *testing.T) {
	for _, err := range []error{nil, errors.New("boom"), ErrInvalid, fmt.Errorf("x: %w", ErrUndecodable)} {
		if vs := Violations(err); vs != nil {
			t.Errorf("Violations(%v) = %v, want nil", err, vs)
		}
	}
	if errors.Is(&InvalidError{}, ErrUndecodable) {
		t.Error("an InvalidError is ErrUndecodable")
	}
	if !errors.Is(fmt.Errorf("wrapped: %w", &InvalidError{}), ErrInvalid) {
		t.Error("a wrapped InvalidError is not ErrInvalid")
	}
}

func TestInvalidErrorText(t *testing.T) {
	err := &InvalidError{Violations: []Violation{{"id", "want a ULID"}, {"body", "must not be empty"}}}
	if got, want := err.Error(), "invalid envelope: id: want a ULID; body: must not be empty"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// TestValidateDeterministic: the same message gives the same error text every time, whatever the map
// iteration order, with metadata violations sorted by key.
func TestValidateDeterministic(t *testing.T) {
	long := strings.Repeat("v", MaxMetadataValue+1)
	keys := []string{"zeta", "alpha", "Mu", "beta", "épsilon", "10", "2", "omega", "k\xff", "", strings.Repeat("k", 70),
		"gamma", "delta", "eta", "theta", "iota", "kappa", "lambda", "nu", "xi"}
	build := func(order []string) *platformv1.InboundMessage {
		m := validMessage()
		m.Metadata = map[string]string{}
		for _, k := range order {
			m.Metadata[k] = long
		}
		m.Body = ""
		return m
	}
	first := Validate(build(keys))
	if first == nil {
		t.Fatal("Validate = nil, want violations")
	}
	want := first.Error()
	for i := range 200 {
		order := slices.Clone(keys)
		// Rotate and reverse so the maps are built in different insertion orders.
		order = append(order[i%len(order):], order[:i%len(order)]...)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		if got := Validate(build(order)).Error(); got != want {
			t.Fatalf("run %d: error text differs:\n got %q\nwant %q", i, got, want)
		}
	}

	var valueKeys []string
	for _, v := range Violations(first) {
		if k, ok := strings.CutPrefix(v.Field, "metadata["); ok {
			valueKeys = append(valueKeys, strings.TrimSuffix(k, "]"))
		}
	}
	if !slices.IsSorted(valueKeys) {
		t.Errorf("metadata violations not sorted by key: %q", valueKeys)
	}
	if len(valueKeys) != len(keys)-3 { // "", "k\xff" and the 70-byte key are bad keys, not bad values
		t.Errorf("%d metadata[key] violations, want %d", len(valueKeys), len(keys)-3)
	}
}

// TestValidateAgreesAfterRoundTrip: what the API validates and encodes, the pipeline decodes and
// validates the same way.
func TestValidateAgreesAfterRoundTrip(t *testing.T) {
	keys := mustKeys(t, "k1", secretOld)
	with := func(mutate func(m *platformv1.InboundMessage)) *platformv1.InboundMessage {
		m := validMessage()
		mutate(m)
		return m
	}
	for _, m := range []*platformv1.InboundMessage{
		validMessage(),
		with(func(m *platformv1.InboundMessage) { m.Body = "  e\u0301  " }),
		with(func(m *platformv1.InboundMessage) { m.Body = strings.Repeat("\u0958", MaxBodyBytes/3) }),
		with(func(m *platformv1.InboundMessage) { m.TenantId = "t\u200b" }),
	} {
		before := Validate(m)
		r, err := InboundRecord(m, keys)
		if err != nil {
			t.Fatalf("InboundRecord: %v", err)
		}
		got, err := DecodeInbound(r)
		if err != nil {
			t.Fatalf("DecodeInbound: %v", err)
		}
		if !proto.Equal(got, m) {
			t.Fatalf("decoded %v, want %v", got, m)
		}
		after := Validate(got)
		if (before == nil) != (after == nil) || (before != nil && before.Error() != after.Error()) {
			t.Errorf("Validate before encoding = %v, after decoding = %v", before, after)
		}
	}
}
