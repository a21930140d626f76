# One image for the operator, the receiver and the workers: `tally manager|receiver|worker`.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/tally .

# distroless/static: no shell, no package manager; nonroot is uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tally /tally
USER 65532:65532
ENTRYPOINT ["/tally"]
