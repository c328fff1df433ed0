// Package scaleout holds no code: its tests run several replicas of the production binaries
// (services/gateway and services/pipeline) against one Kafka, one MongoDB-wire server and one Redis, and
// check what the design promises when it scales sideways (see multireplica_test.go).
package scaleout
