package gateway

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

func TestCheckIDs(t *testing.T) {
	long := strings.Repeat("c", 129)
	tests := []struct {
		name      string
		req       proto.Message
		wantField string // "" when valid
	}{
		{"valid ids", &platformv1.AddMemberRequest{ConversationId: "c1", UserId: "bob"}, ""},
		{"empty ids are the handler's to refuse", &platformv1.AddMemberRequest{}, ""},
		{"a long conversation id", &platformv1.AddMemberRequest{ConversationId: long, UserId: "bob"}, "conversation_id"},
		{"invalid UTF-8 user id", &platformv1.AddMemberRequest{ConversationId: "c1", UserId: "\xff"}, "user_id"},
		{"a control character", &platformv1.SendMessageRequest{ConversationId: "c\x7f", Body: "hi"}, "conversation_id"},
		{"an idempotency key is the envelope's to check", &platformv1.SendMessageRequest{ConversationId: "c1", Body: "hi", ClientMessageId: "\x01"}, ""},
		{"nested: a filter's tenant id", &platformv1.ListDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: long}}, "filter.tenant_id"},
		{"a body is not an id", &platformv1.SendMessageRequest{ConversationId: "c1", Body: "\u200b" + long}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkIDs(tc.req)
			if tc.wantField == "" {
				if err != nil {
					t.Fatalf("want nil, got %v", err)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("want INVALID_ARGUMENT, got %v", err)
			}
			if strings.Contains(st.Message(), long) {
				t.Errorf("the error repeats the value: %s", st.Message())
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) != 1 || fields[0] != tc.wantField {
				t.Errorf("violations on %v, want [%s]", fields, tc.wantField)
			}
		})
	}
}
