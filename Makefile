# postgate build, generation, checks and tests. `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

LOCALBIN := $(CURDIR)/bin
CONTROLLER_GEN_VERSION := v0.23.0
GOLANGCI_LINT_VERSION := v2.15.0
HELM_VERSION := v3.22.0
HELM_DOCS_VERSION := v1.14.2
# Helm's own release builds set the Kubernetes version that client-only
# renders (helm template, helm install --dry-run=client) assume from their
# k8s.io/client-go (v0.37 for helm v3.22.0); a plain go install leaves
# v1.20.0, below the chart's kubeVersion (>=1.30).
HELM_KUBE_MINOR := 37
HELM_LDFLAGS := $(foreach p,chartutil lint/rules,-X helm.sh/helm/v3/pkg/$(p).k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$(p).k8sVersionMinor=$(HELM_KUBE_MINOR))
CONTROLLER_GEN := $(LOCALBIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
GOLANGCI_LINT := $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM_DOCS := $(LOCALBIN)/helm-docs-$(HELM_DOCS_VERSION)
# hack/e2e runs bin/helm (no version in the name, so the tests find it).
HELM := $(LOCALBIN)/helm
# promtool of Prometheus 3.16 (Go module versions v0.3xx are Prometheus
# 3.xx), for the chart's alert rule tests; hack/e2e runs bin/promtool.
PROMTOOL_VERSION := v0.316.0
PROMTOOL := $(LOCALBIN)/promtool
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# Paths that `make generate manifests` writes; `make verify` fails when they drift.
GENERATED := api/v1alpha1/zz_generated.deepcopy.go api/v1alpha1/applyconfiguration config/crd/bases charts/postgate/files/crds internal/manifest/crds config/rbac/operator config/rbac/relay charts/postgate/files/rbac charts/postgate/README.md

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code and the apply configurations (api/v1alpha1/applyconfiguration).
	# From scratch, so that the files of a removed type go too.
	rm -rf api/v1alpha1/applyconfiguration
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt applyconfiguration:headerFile=hack/boilerplate.go.txt,omitToolVersion=true paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs into config/crd/bases, the chart and internal/manifest, and the RBAC roles into config/rbac and the chart.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=postgate-operator paths=./internal/controllers/... output:rbac:artifacts:config=config/rbac/operator
	$(CONTROLLER_GEN) rbac:roleName=postgate-relay paths=./internal/relay/... output:rbac:artifacts:config=config/rbac/relay
	# The chart renders these as templates (templates/crds.yaml), so that
	# helm upgrade updates them; Helm never upgrades what is in crds/.
	rm -rf charts/postgate/files/crds && mkdir -p charts/postgate/files/crds
	cp config/crd/bases/*.yaml charts/postgate/files/crds/
	# internal/manifest embeds its own copy (postgate check and the standalone relay).
	rm -rf internal/manifest/crds && mkdir -p internal/manifest/crds
	cp config/crd/bases/*.yaml internal/manifest/crds/
	# The chart renders these rules unchanged (templates/_helpers.tpl, postgate.rbac).
	rm -rf charts/postgate/files/rbac && mkdir -p charts/postgate/files/rbac/operator charts/postgate/files/rbac/relay
	cp config/rbac/operator/role.yaml charts/postgate/files/rbac/operator/
	cp config/rbac/relay/role.yaml charts/postgate/files/rbac/relay/

.PHONY: docs
docs: $(HELM_DOCS) ## Generate charts/postgate/README.md (the values table) from values.yaml's comments and README.md.gotmpl.
	$(HELM_DOCS) --chart-search-root charts --template-files README.md.gotmpl --sort-values-order file

.PHONY: fmt
fmt: ## Format the Go code.
	gofmt -s -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## go vet every package.
	go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (.golangci.yml).
	$(GOLANGCI_LINT) run ./...

.PHONY: envtest
envtest: ## Build kube-apiserver, kubectl and etcd into bin/ (once; later runs reuse them).
	bash hack/envtest.sh

# Debian packages the tests use: swaks (with libnet-ssleay-perl, which it
# only recommends, for STARTTLS) and python3-dkim (an independent DKIM
# verifier). Installed only when missing; CI machines start without them.
DEBIAN_PACKAGES := swaks libnet-ssleay-perl python3-dkim
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps
deps: ## Install the Debian packages the tests use, when missing.
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing from Debian"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	  fi

.PHONY: helm promtool test
helm: ## Build helm into bin/ (once per HELM_VERSION), for hack/e2e.
	@if [ ! -x $(HELM) ] || [ ! -f $(LOCALBIN)/.helm.stamp ] || [ "$$(cat $(LOCALBIN)/.helm.stamp)" != $(HELM_VERSION) ]; then \
	  mkdir -p $(LOCALBIN); \
	  echo "building helm $(HELM_VERSION) into bin/"; \
	  GOBIN=$(LOCALBIN) CGO_ENABLED=0 go install -ldflags "$(HELM_LDFLAGS)" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	  echo $(HELM_VERSION) > $(LOCALBIN)/.helm.stamp; \
	fi

# remove_all_sd leaves out the service discovery plugins (cloud SDKs):
# promtool's rule checks and tests do not use them.
promtool: ## Build promtool into bin/ (once per PROMTOOL_VERSION), for hack/e2e's alert rule tests.
	@if [ ! -x $(PROMTOOL) ] || [ ! -f $(LOCALBIN)/.promtool.stamp ] || [ "$$(cat $(LOCALBIN)/.promtool.stamp)" != $(PROMTOOL_VERSION) ]; then \
	  mkdir -p $(LOCALBIN); \
	  echo "building promtool $(PROMTOOL_VERSION) into bin/"; \
	  GOBIN=$(LOCALBIN) CGO_ENABLED=0 go install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION); \
	  echo $(PROMTOOL_VERSION) > $(LOCALBIN)/.promtool.stamp; \
	fi

test: envtest deps helm promtool ## Run every test against a real API server, sockets and DNS on loopback.
	go test -count=1 ./...

.PHONY: build
build: ## Build bin/postgate.
	CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(LOCALBIN)/postgate ./cmd/postgate

.PHONY: verify
verify: generate manifests docs ## Fail when generated files drift from the tree; format, vet and lint.
	bash hack/verify-generated.sh $(GENERATED)
	@go mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'" >&2; go mod tidy -diff; exit 1; }
	@unformatted=$$(gofmt -s -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "not gofmt -s formatted: $$unformatted" >&2; exit 1; fi
	$(MAKE) vet lint

$(CONTROLLER_GEN):
	mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(LOCALBIN)/controller-gen $@

$(HELM_DOCS):
	mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install github.com/norwoodj/helm-docs/cmd/helm-docs@$(HELM_DOCS_VERSION)
	mv $(LOCALBIN)/helm-docs $@

$(GOLANGCI_LINT):
	mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(LOCALBIN)/golangci-lint $@

# Benchmarks, the crash harness and fuzzing (README: Benchmarks).
BENCH_RUNS ?= 3
BENCH_FLAGS ?=
CRASH_KILLS ?= 25
FUZZTIME ?= 20s

.PHONY: bench crash fuzz
bench: build ## postgate against Postfix on loopback, with the load client and smtp-source (BENCH_FLAGS="-loads ..."), medians of BENCH_RUNS runs (installs postfix from Debian when missing; Postfix needs root).
	@if ! command -v smtp-source >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-source ]; then \
	  echo "installing postfix (smtp-source, smtp-sink) from Debian"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends postfix; \
	fi
	uptime
	go run ./hack/bench -postgate $(LOCALBIN)/postgate -runs $(BENCH_RUNS) $(BENCH_FLAGS)
	go test -run '^$$' -bench '^(BenchmarkCompile|BenchmarkLookup)$$' -benchmem ./internal/routing/

crash: ## The full crash harness: kill -9 the relay CRASH_KILLS times under load, then a spool that fills up (a short version runs in make test).
	POSTGATE_CRASH_KILLS=$(CRASH_KILLS) go test -count=1 -v -timeout 30m ./hack/crash/

fuzz: ## Run every native Go fuzz target for FUZZTIME each, one at a time; fails when any finds a crash (kept in its testdata/fuzz).
	@failed=""; \
	for pkg in $$(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | xargs -n1 dirname | sort -u); do \
	  for target in $$(go test -list '^Fuzz' ./$$pkg | grep '^Fuzz'); do \
	    echo "--- ./$$pkg $$target ($(FUZZTIME))"; \
	    go test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) ./$$pkg || failed="$$failed ./$$pkg:$$target"; \
	  done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzzing found crashes in:$$failed (inputs under each package's testdata/fuzz)" >&2; exit 1; fi
