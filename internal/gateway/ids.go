package gateway

import (
	"context"
	"fmt"
	"strings"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/msgplatform/platform/internal/envelope"
)

// maxIDDepth bounds how deep checkIDs looks into nested messages (requests nest ids one or two levels:
// message.id, filter.tenant_id).
const maxIDDepth = 4

// checkIDs checks every id a request carries, path or body, before anything uses one: a string field
// named `id` or ending in `_id`, and each element of a repeated one ending in `_ids`, in the request and
// its nested messages, must pass envelope.CheckID (1–128 bytes of printable UTF-8) when set. An empty id
// is left to the handler, which knows whether it is required. It answers INVALID_ARGUMENT with a
// BadRequest naming the field, never repeating the value.
func checkIDs(req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	var bad []*errdetails.BadRequest_FieldViolation
	walkIDs(m.ProtoReflect(), "", 0, func(path string, err error) {
		bad = append(bad, &errdetails.BadRequest_FieldViolation{Field: path, Description: err.Error()})
	})
	if len(bad) == 0 {
		return nil
	}
	st := status.New(codes.InvalidArgument, fmt.Sprintf("invalid id in %s: %s", bad[0].Field, bad[0].Description))
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: bad}); err == nil {
		st = d
	}
	return st.Err()
}

func walkIDs(m protoreflect.Message, prefix string, depth int, report func(path string, err error)) {
	m.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(f.Name())
		path := prefix + name
		switch {
		case f.Kind() == protoreflect.StringKind && f.Cardinality() != protoreflect.Repeated && isIDField(name):
			if s := v.String(); s != "" {
				if err := envelope.CheckID(s); err != nil {
					report(path, err)
				}
			}
		case f.Kind() == protoreflect.StringKind && f.IsList() && strings.HasSuffix(name, "_ids"):
			list := v.List()
			for i := range list.Len() {
				if err := envelope.CheckID(list.Get(i).String()); err != nil {
					report(fmt.Sprintf("%s[%d]", path, i), err)
				}
			}
		case f.Kind() == protoreflect.MessageKind && !f.IsList() && !f.IsMap() && depth < maxIDDepth:
			walkIDs(v.Message(), path+".", depth+1, report)
		}
		return true
	})
}

// isIDField: `id` and `*_id`, except client_message_id, the sender's opaque idempotency key, whose rules
// (length, UTF-8) envelope.Validate owns.
func isIDField(name string) bool {
	return name == "id" || strings.HasSuffix(name, "_id") && name != "client_message_id"
}

// idsUnary checks a unary request's ids (checkIDs).
func idsUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := checkIDs(req); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// idsStream checks the ids of every message a stream receives.
func idsStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &idCheckingStream{WrappedServerStream: middleware.WrapServerStream(ss)})
	}
}

type idCheckingStream struct {
	*middleware.WrappedServerStream
}

func (s *idCheckingStream) RecvMsg(m any) error {
	if err := s.WrappedServerStream.RecvMsg(m); err != nil {
		return err
	}
	return checkIDs(m)
}
