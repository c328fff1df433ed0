package api

import (
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/msgplatform/platform/internal/auth"
)

// streamSlots caps the live streams one principal holds open at once on this process: each holds a
// goroutine, a subscription and a buffer, so one token must not be able to open thousands.
type streamSlots struct {
	max  int // ≤ 0: no cap
	mu   sync.Mutex
	open map[[2]string]int // (tenant, subject) → streams open
}

func newStreamSlots(max int) *streamSlots {
	return &streamSlots{max: max, open: map[[2]string]int{}}
}

// acquire takes a slot for p, or fails with RESOURCE_EXHAUSTED; release gives it back.
func (s *streamSlots) acquire(p auth.Principal) (release func(), err error) {
	if s == nil || s.max <= 0 {
		return func() {}, nil
	}
	k := [2]string{p.TenantID, p.Subject}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[k] >= s.max {
		return nil, status.Errorf(codes.ResourceExhausted, "at most %d live streams per caller; close one first", s.max)
	}
	s.open[k]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.open[k]--; s.open[k] <= 0 {
				delete(s.open, k)
			}
		})
	}, nil
}
