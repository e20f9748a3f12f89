# One image for `postgate operator` and `postgate relay`: a static binary on
# distroless, running as the nonroot user (65532).
FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY internal/ internal/
COPY webhook/ webhook/
ARG VERSION=dev
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/postgate ./cmd/postgate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/postgate /usr/local/bin/postgate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/postgate"]
