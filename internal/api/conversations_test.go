package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/testenv"
)

func code(err error) codes.Code { return status.Code(err) }

func badRequestFields(err error) []string {
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

func TestConversationLifecycle(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice, bob, carol := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1"), testenv.Token(t, "carol", "t1")

	created, err := g.conv.CreateConversation(as(alice), &platformv1.CreateConversationRequest{Title: "  Launch  ", MemberIds: []string{"bob", "bob", "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	c := created.GetConversation()
	if c.GetTitle() != "Launch" || c.GetCreatorId() != "alice" || c.GetMemberCount() != 2 || c.GetVersion() != 1 ||
		c.GetState() != platformv1.ConversationState_CONVERSATION_STATE_ACTIVE || c.GetTenantId() != "t1" || len(c.GetId()) != 26 {
		t.Fatalf("created = %v", c)
	}
	id := c.GetId()

	if got, err := g.conv.GetConversation(as(bob), &platformv1.GetConversationRequest{ConversationId: id}); err != nil || got.GetConversation().GetId() != id {
		t.Fatalf("member Get = %v, %v", got, err)
	}
	if _, err := g.conv.GetConversation(as(carol), &platformv1.GetConversationRequest{ConversationId: id}); code(err) != codes.PermissionDenied {
		t.Errorf("non-member Get = %v", err)
	}
	members, err := g.conv.ListMembers(as(bob), &platformv1.ListMembersRequest{ConversationId: id})
	if err != nil || len(members.GetMembers()) != 2 || members.GetMembers()[0].GetRole() != platformv1.MemberRole_MEMBER_ROLE_OWNER {
		t.Fatalf("ListMembers = %v, %v", members, err)
	}

	t.Run("update with mask and version", func(t *testing.T) {
		up, err := g.conv.UpdateConversation(as(alice), &platformv1.UpdateConversationRequest{
			Conversation: &platformv1.Conversation{Id: id, Title: "Renamed", Version: 1},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"title"}}})
		if err != nil || up.GetConversation().GetTitle() != "Renamed" || up.GetConversation().GetVersion() != 2 {
			t.Fatalf("Update = %v, %v", up, err)
		}
		_, err = g.conv.UpdateConversation(as(alice), &platformv1.UpdateConversationRequest{
			Conversation: &platformv1.Conversation{Id: id, Title: "Stale", Version: 1}})
		if code(err) != codes.Aborted {
			t.Errorf("stale version = %v, want Aborted", err)
		}
		_, err = g.conv.UpdateConversation(as(alice), &platformv1.UpdateConversationRequest{
			Conversation: &platformv1.Conversation{Id: id, Title: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"creator_id"}}})
		if code(err) != codes.InvalidArgument || !contains(badRequestFields(err), "update_mask") {
			t.Errorf("unknown mask path = %v", err)
		}
		if _, err := g.conv.UpdateConversation(as(bob), &platformv1.UpdateConversationRequest{
			Conversation: &platformv1.Conversation{Id: id, Title: "By member"}}); code(err) != codes.PermissionDenied {
			t.Errorf("member update = %v", err)
		}
	})

	t.Run("members and owners", func(t *testing.T) {
		if _, err := g.conv.AddMember(as(alice), &platformv1.AddMemberRequest{ConversationId: id, UserId: "carol", Role: platformv1.MemberRole_MEMBER_ROLE_ADMIN}); err != nil {
			t.Fatal(err)
		}
		if _, err := g.conv.GetConversation(as(carol), &platformv1.GetConversationRequest{ConversationId: id}); err != nil {
			t.Errorf("added member on the next call: %v", err)
		}
		// An admin must not be able to create owners or demote them.
		if _, err := g.conv.AddMember(as(carol), &platformv1.AddMemberRequest{ConversationId: id, UserId: "carol", Role: platformv1.MemberRole_MEMBER_ROLE_OWNER}); code(err) != codes.PermissionDenied {
			t.Errorf("admin self-promotion = %v", err)
		}
		if _, err := g.conv.RemoveMember(as(carol), &platformv1.RemoveMemberRequest{ConversationId: id, UserId: "alice"}); code(err) != codes.PermissionDenied {
			t.Errorf("admin removing the owner = %v", err)
		}
		if _, err := g.conv.RemoveMember(as(alice), &platformv1.RemoveMemberRequest{ConversationId: id, UserId: "alice"}); code(err) != codes.FailedPrecondition {
			t.Errorf("removing the last owner = %v", err)
		}
		if _, err := g.conv.AddMember(as(alice), &platformv1.AddMemberRequest{ConversationId: id, UserId: "alice", Role: platformv1.MemberRole_MEMBER_ROLE_MEMBER}); code(err) != codes.FailedPrecondition {
			t.Errorf("demoting the last owner = %v", err)
		}
		if _, err := g.conv.RemoveMember(as(bob), &platformv1.RemoveMemberRequest{ConversationId: id, UserId: "bob"}); err != nil {
			t.Errorf("member leaving = %v", err)
		}
		if _, err := g.conv.GetConversation(as(bob), &platformv1.GetConversationRequest{ConversationId: id}); code(err) != codes.PermissionDenied {
			t.Errorf("removed member on the very next call = %v", err)
		}
		if _, err := g.conv.RemoveMember(as(alice), &platformv1.RemoveMemberRequest{ConversationId: id, UserId: "nobody"}); code(err) != codes.NotFound {
			t.Errorf("removing a non-member = %v", err)
		}
	})

	t.Run("archive", func(t *testing.T) {
		if _, err := g.conv.DeleteConversation(as(carol), &platformv1.DeleteConversationRequest{ConversationId: id}); code(err) != codes.PermissionDenied {
			t.Errorf("admin delete = %v", err)
		}
		del, err := g.conv.DeleteConversation(as(alice), &platformv1.DeleteConversationRequest{ConversationId: id})
		if err != nil || del.GetConversation().GetState() != platformv1.ConversationState_CONVERSATION_STATE_ARCHIVED || del.GetConversation().GetDeleteTime() == nil {
			t.Fatalf("Delete = %v, %v", del, err)
		}
		if _, err := g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: id, Body: "late"}); code(err) != codes.FailedPrecondition {
			t.Errorf("send to archived = %v", err)
		}
		if _, err := g.conv.AddMember(as(alice), &platformv1.AddMemberRequest{ConversationId: id, UserId: "dan"}); code(err) != codes.FailedPrecondition {
			t.Errorf("add member to archived = %v", err)
		}
		if got, err := g.conv.GetConversation(as(carol), &platformv1.GetConversationRequest{ConversationId: id}); err != nil || got.GetConversation().GetState() != platformv1.ConversationState_CONVERSATION_STATE_ARCHIVED {
			t.Errorf("archived stays readable: %v, %v", got, err)
		}
		list, _ := g.conv.ListConversations(as(alice), &platformv1.ListConversationsRequest{})
		withArchived, _ := g.conv.ListConversations(as(alice), &platformv1.ListConversationsRequest{IncludeArchived: true})
		if len(list.GetConversations()) != 0 || len(withArchived.GetConversations()) != 1 {
			t.Errorf("list = %d, with archived = %d; want 0 and 1", len(list.GetConversations()), len(withArchived.GetConversations()))
		}
	})
}

func TestConversationValidation(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	tests := []struct {
		name  string
		req   *platformv1.CreateConversationRequest
		field string
	}{
		{"empty title", &platformv1.CreateConversationRequest{Title: "   "}, "title"},
		{"long title", &platformv1.CreateConversationRequest{Title: strings.Repeat("é", 201)}, "title"},
		{"empty member id", &platformv1.CreateConversationRequest{Title: "t", MemberIds: []string{""}}, "member_ids[0]"},
		{"control character", &platformv1.CreateConversationRequest{Title: "t", MemberIds: []string{"a\nb"}}, "member_ids[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := g.conv.CreateConversation(as(alice), tc.req)
			if code(err) != codes.InvalidArgument || !contains(badRequestFields(err), tc.field) {
				t.Errorf("err = %v, fields %v; want INVALID_ARGUMENT naming %s", err, badRequestFields(err), tc.field)
			}
		})
	}
	if _, err := g.conv.ListConversations(as(alice), &platformv1.ListConversationsRequest{PageSize: -1}); code(err) != codes.InvalidArgument {
		t.Errorf("negative page size = %v", err)
	}
	if _, err := g.conv.ListConversations(as(alice), &platformv1.ListConversationsRequest{PageToken: "garbage!"}); code(err) != codes.InvalidArgument {
		t.Errorf("bad page token = %v", err)
	}
	// Through REST the same errors carry the right HTTP codes and the BadRequest details.
	status, body := restCall(t, g, alice, http.MethodPost, "/v1/conversations", `{"title":""}`)
	if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "google.rpc.BadRequest") {
		t.Errorf("REST empty title = %d %v", status, body)
	}
}

// Pages fetched while conversations are being created neither skip nor repeat any that existed at the
// start.
func TestListConversationsPaginationUnderInserts(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	existing := map[string]bool{}
	for i := range 7 {
		c, err := g.conv.CreateConversation(as(alice), &platformv1.CreateConversationRequest{Title: fmt.Sprintf("c%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		existing[c.GetConversation().GetId()] = true
	}
	seen := map[string]int{}
	token := ""
	for page := 0; ; page++ {
		resp, err := g.conv.ListConversations(as(alice), &platformv1.ListConversationsRequest{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.GetConversations() {
			seen[c.GetId()]++
		}
		if _, err := g.conv.CreateConversation(as(alice), &platformv1.CreateConversationRequest{Title: fmt.Sprintf("new%d", page)}); err != nil {
			t.Fatal(err)
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
		if page > 10 {
			t.Fatal("pagination does not end")
		}
	}
	for id := range existing {
		if seen[id] != 1 {
			t.Errorf("conversation %s seen %d times", id, seen[id])
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("conversation %s repeated", id)
		}
	}
	// REST: same listing, lowerCamelCase JSON.
	status, body := restCall(t, g, alice, http.MethodGet, "/v1/conversations?pageSize=2", "")
	if status != http.StatusOK || len(body["conversations"].([]any)) != 2 || body["nextPageToken"] == "" {
		t.Errorf("REST list = %d %v", status, body)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
