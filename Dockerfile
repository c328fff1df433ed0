# syntax=docker/dockerfile:1
#
# One Dockerfile for both production binaries; the build arg SERVICE picks which:
#
#   docker build --build-arg SERVICE=gateway  -t platform-gateway .
#   docker build --build-arg SERVICE=pipeline -t platform-pipeline .
#
# docker-compose.yml builds both from here. The images hold one static binary (CGO_ENABLED=0), CA
# certificates, grpc-health-probe (the gateway's healthcheck) and busybox wget (the pipeline's, on /readyz);
# they run as an unprivileged user (uid/gid 65532, the same as distroless "nonroot").

ARG GO_VERSION=1.26
ARG ALPINE_VERSION=3.22

# ---- build: compile ./services/${SERVICE} -------------------------------------------------------------------
# Runs on the builder's own platform and cross-compiles to the target one (no emulation for multi-arch builds).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# Modules first, in their own layer: it is rebuilt only when go.mod or go.sum change, not on every source edit.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
ARG SERVICE
ARG TARGETOS
ARG TARGETARCH
RUN case "${SERVICE}" in \
      gateway|pipeline) ;; \
      *) echo "build arg SERVICE must be gateway or pipeline, got '${SERVICE}'" >&2; exit 1 ;; \
    esac
RUN --mount=type=cache,target=/root/.cache/go-build \
    GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/service ./services/${SERVICE}

# ---- probe: grpc-health-probe, the same version tools/go.mod pins ---------------------------------------------
# A stage of its own so it is cached independently of the sources (and built in parallel with them).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS probe
ARG GRPC_HEALTH_PROBE_VERSION=v0.4.62
ARG TARGETOS
ARG TARGETARCH
# No GOBIN: `go install` refuses it when cross-compiling, and then puts the binary under bin/<os>_<arch>/.
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go install -trimpath -ldflags="-s -w" github.com/grpc-ecosystem/grpc-health-probe@${GRPC_HEALTH_PROBE_VERSION} \
    && mkdir -p /out \
    && if [ -f "/go/bin/${TARGETOS}_${TARGETARCH}/grpc-health-probe" ]; then \
         mv "/go/bin/${TARGETOS}_${TARGETARCH}/grpc-health-probe" /out/; \
       else \
         mv /go/bin/grpc-health-probe /out/; \
       fi

# ---- runtime ------------------------------------------------------------------------------------------------
FROM alpine:${ALPINE_VERSION}
ARG SERVICE
RUN apk add --no-cache ca-certificates tzdata \
    && addgroup -S -g 65532 nonroot \
    && adduser -S -D -H -u 65532 -G nonroot -s /sbin/nologin nonroot
COPY --from=probe /out/grpc-health-probe /usr/local/bin/grpc-health-probe
COPY --from=build /out/service /usr/local/bin/service
LABEL org.opencontainers.image.title="platform-${SERVICE}" \
      org.opencontainers.image.source="https://github.com/msgplatform/platform"
# The defaults of internal/config, repeated so `docker run` without -e listens where EXPOSE says.
ENV GRPC_ADDR=:9090 HTTP_ADDR=:8080 METRICS_ADDR=:9464
# 9090 gRPC (gateway), 8080 REST + /healthz + /readyz (both), 9464 Prometheus /metrics (both).
EXPOSE 9090 8080 9464
USER 65532:65532
# The binary is PID 1 and handles SIGTERM itself (drain, GracefulStop, flush; bounded by SHUTDOWN_TIMEOUT).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/service"]
