package resources

// Limits of a message, enforced by SendMessage and again by the pipeline's validate stage. One
// definition, so a message the API accepted is never refused downstream.
const (
	MaxBodyBytes          = 16 << 10 // UTF-8 bytes of a body
	MaxMetadata           = 16       // metadata entries
	MaxMetadataKey        = 64       // bytes of a metadata key
	MaxMetadataValue      = 512      // bytes of a metadata value
	MaxClientMessageIDLen = 128      // bytes of a client_message_id
)
