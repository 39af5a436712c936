# Builds the worker and enqueue binaries into a small image.
#   docker build -t orgsync .
FROM golang:1.24-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/orgsync/orgsync/trutoclient.Version=${VERSION}" \
      -o /out/ ./cmd/worker ./cmd/enqueue ./cmd/fake-truto

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot
# 9464: /healthz, /readyz (bind it to loopback on the host; see docker-compose.yml)
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/worker"]
