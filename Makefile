# Tally's build. `make local` runs the whole pipeline on this machine; `make test` runs every test.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN ?= $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMG ?= ghcr.io/tallyhq/tally:$(VERSION)
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(BIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT ?= $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
GINKGO_FLAGS ?=
# Packages that start a real API server (envtest); every other package also runs under -race.
ENVTEST_PACKAGES := ./controllers/... ./test/deploy/... ./test/e2e/...
HELM_VERSION ?= v3.22.0
# Helm from the Go module proxy (the Go build cache keeps the binary); HELM=/path/to/helm overrides.
HELM ?= go run helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
CHART ?= charts/tally

.PHONY: all
all: build

##@ Development

.PHONY: fmt
fmt: ## Format the Go code.
	go fmt ./...

.PHONY: vet
vet: ## Vet the Go code.
	go vet ./...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRD and RBAC manifests from the Go markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/...;./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(MAKE) --no-print-directory chart-crds

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./api/..."

.PHONY: envtest
envtest: ## Build kube-apiserver, etcd and kubectl from Go modules once; prints KUBEBUILDER_ASSETS.
	@./hack/envtest.sh

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (.golangci.yml).
	$(GOLANGCI_LINT) run ./...

.PHONY: test
test: ## Run every test against real Postgres, embedded NATS, an envtest API server and headless Chromium.
	@./hack/browser-deps.sh; \
	assets="$$(./hack/envtest.sh | tail -n 1)"; \
	racy="$$(go list ./... | grep -v -e '/controllers' -e '/test/deploy' -e '/test/e2e')"; \
	CONTROLLER_GEN="$(CONTROLLER_GEN)" go test -race -count=1 -timeout 30m $$racy $(GINKGO_FLAGS); \
	KUBEBUILDER_ASSETS="$$assets" go test -count=1 -timeout 45m $(ENVTEST_PACKAGES) $(GINKGO_FLAGS)

.PHONY: test-e2e
test-e2e: build ## Run only the end-to-end test (part of `make test` too).
	@assets="$$(./hack/envtest.sh | tail -n 1)"; \
	KUBEBUILDER_ASSETS="$$assets" go test -count=1 -timeout 20m ./test/e2e/ -v -args -ginkgo.v

.PHONY: test-scale
test-scale: ## Run the scale tests (build tag scale; not part of `make test`): 1,000 pool members on envtest, a NATS cluster failover, a pool worker with 1,000 idle members.
	@assets="$$(./hack/envtest.sh | tail -n 1)"; \
	KUBEBUILDER_ASSETS="$$assets" go test -tags scale -count=1 -timeout 30m ./test/scale/ ./test/cluster/ ./test/pool/ -v

.PHONY: test-browser
test-browser: ## Run only the browser test: Segment's analytics.js from npm in headless Chromium against tally local (part of `make test` too).
	@./hack/browser-deps.sh
	go test -count=1 -timeout 10m ./test/browser/ -v -args -ginkgo.v

.PHONY: test-generated
test-generated: manifests generate ## Fail when generated files are stale.
	git diff --exit-code -- api config

##@ Build

.PHONY: build
build: ## Build bin/tally.
	go build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/tally .

.PHONY: local
local: build ## Run Tally locally: embedded NATS, the local Postgres, manifests from config/samples/.
	$(BIN)/tally local --manifests config/samples

.PHONY: bench
bench: ## Measure ingest, end-to-end and freshness against the JetStream and Postgres ceilings.
	go run ./hack/bench $(BENCH_FLAGS)

.PHONY: docker-build
docker-build: ## Build the container image (needs a container engine).
	docker build --build-arg VERSION=$(VERSION) -t $(IMG) .

##@ Deploy

.PHONY: chart-crds
chart-crds: ## Copy the generated CRDs and manager ClusterRole from config/ into the Helm chart.
	rm -f $(CHART)/files/crds/*.yaml
	cp config/crd/bases/*.yaml $(CHART)/files/crds/
	cp config/rbac/role.yaml $(CHART)/files/rbac/role.yaml

.PHONY: helm-lint
helm-lint: ## Lint the Helm chart (strict).
	$(HELM) lint --strict $(CHART)

.PHONY: helm-template
helm-template: ## Render the Helm chart; HELM_TEMPLATE_ARGS adds flags (e.g. --values my-values.yaml).
	@$(HELM) template tally $(CHART) --namespace tally-system $(HELM_TEMPLATE_ARGS)

.PHONY: test-deploy
test-deploy: ## Test the Helm chart and config/default: lint, render, server-side dry-run on envtest.
	@assets="$$(./hack/envtest.sh | tail -n 1)"; \
	KUBEBUILDER_ASSETS="$$assets" go test -count=1 ./test/deploy/ $(GINKGO_FLAGS)

$(GOLANGCI_LINT):
	GOBIN=$(BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/golangci-lint $(GOLANGCI_LINT)

$(CONTROLLER_GEN):
	GOBIN=$(BIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(BIN)/controller-gen $(CONTROLLER_GEN)

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
