package envelope

// Class says what to do with a record that failed: the dlq.error_class header.
type Class string

// Error classes.
const (
	// Permanent: the record fails the same way every time (too large, unsigned, undecodable, invalid,
	// unauthorized sender): it goes to the DLQ at once and the others go on.
	Permanent Class = "permanent"
	// Transient: a dependency failed (store or Redis unavailable, a timeout): the stage is retried with
	// backoff, and consumption of that partition pauses meanwhile.
	Transient Class = "transient"
)

// Pipeline stage names, in order: metric labels and the dlq.stage header.
const (
	StageAuthenticate = "authenticate"
	StageDeserialize  = "deserialize"
	StageValidate     = "validate"
	StageTenant       = "tenant"
	StageAuthorize    = "authorize"
	StageTransform    = "transform"
	StagePersist      = "persist"
	StageNotify       = "notify"
)

// Stages lists the stage names in pipeline order.
var Stages = []string{StageAuthenticate, StageDeserialize, StageValidate, StageTenant, StageAuthorize,
	StageTransform, StagePersist, StageNotify}

// LabelOther replaces a value read from a record that is not one of the known values, so a metric label
// taken from a header has a bounded set of values whatever producers write.
const LabelOther = "other"

// StageLabel returns stage when it is a known stage name, else LabelOther.
func StageLabel(stage string) string {
	for _, s := range Stages {
		if s == stage {
			return stage
		}
	}
	return LabelOther
}

// ClassLabel returns c when it is a known class, else LabelOther.
func ClassLabel(c string) string {
	if c == string(Permanent) || c == string(Transient) {
		return c
	}
	return LabelOther
}
