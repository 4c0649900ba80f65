# crane-operator: `make run` to try it, `make test` for everything CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
E2E_THREADS ?= 6

.PHONY: help cluster cluster-down run demo dashboard install-plugin test prerequisites lint unit chart incluster e2e chaos crd bench bench-fleet bench-smoke build image deploy simulate simulate-test

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

build: ## Build the operator binary
	$(CARGO) build --release --locked

image: ## Operator and app images as OCI archives in target/image/ (static binaries; no Docker, no registry)
	hack/image.sh

deploy: ## Helm-install the operator (CRD included) into the current KUBECONFIG's cluster, namespace crane-system; IMAGE=, TAG= override the image (on kind: make image first, and it is loaded)
	hack/deploy.sh $(HELM_ARGS)

cluster: ## Start the local cluster: control plane, kwok nodes, real node crane-node-0 (root); kubeconfig in .cluster/kubeconfig
	tests/cluster/up.sh

cluster-down: ## Stop the local cluster, remove its state, undo its changes to the machine
	tests/cluster/down.sh

run: ## Run the operator in the foreground (on the local cluster unless KUBECONFIG is set)
	hack/run.sh

demo: ## The book's walk-through, narrated (uses the operator of make run, or starts one)
	hack/demo.sh

dashboard: ## The live web view of CraneReplicaSets on http://127.0.0.1:8001 (local cluster unless KUBECONFIG is set)
	hack/dashboard.sh

PREFIX ?= $(HOME)/.local

install-plugin: ## kubectl-crane (the kubectl plugin: kubectl crane run/get/why/restart/dashboard) and its completion kubectl_complete-crane into PREFIX/bin (default ~/.local/bin)
	hack/install-plugin.sh "$(PREFIX)"

crd: ## Regenerate manifests/crd.yaml and the chart's copy from the Rust types
	$(CARGO) run --quiet --locked -- crd > manifests/crd.yaml
	cp manifests/crd.yaml charts/crane-operator/files/crd.yaml

lint: ## rustfmt, clippy, shellcheck, promtool check rules, actionlint (workflows), hadolint (Dockerfile); tools built or fetched on first use
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	@hack/debian-packages.sh "make lint" shellcheck:shellcheck
	shellcheck -x hack/*.sh tests/simulate/*.sh tests/cluster/*.sh tests/chart/*.sh tests/incluster/*.sh tests/kind/*.sh tests/argocd/*.sh tests/release/*.sh .ci/run
	tests/cluster/build.sh exec promtool check rules charts/crane-operator/files/alerts.yaml
	tests/cluster/build.sh exec actionlint -no-color
	tests/cluster/build.sh exec hadolint --no-color Dockerfile
	@# Claims the docs once made and measurements refuted (README, "The CRD and kubectl apply").
	@! grep -rnIi -e 'too large for client-side' -e 'upgrades need helm 3.17' README.md CHANGELOG.md CONTRIBUTING.md SECURITY.md charts docs hack manifests \
	  || { echo "make lint: the docs repeat a refuted claim (above)" >&2; exit 1; }

unit: ## Unit, property and generated-file tests, the app's, the Argo CD health check's, the release scripts' (no cluster)
	$(CARGO) test --locked -p crane-operator -p crane-app --lib --bins --test generated --test schema_properties --test planner_properties --test backpressure --test server
	tests/argocd/test.sh
	tests/release/test.sh

chart: cluster ## Helm chart and manifests/ checks; install, upgrade, uninstall on the local cluster (or KUBECONFIG)
	tests/chart/test.sh

# After image: the chart installed with the images of make image, on the real node.
incluster: cluster image ## The operator in-cluster from its image on crane-node-0: helm install/upgrade/test, leader hand-over, real traffic
	tests/incluster/test.sh

e2e: cluster ## End-to-end tests on the local cluster (or KUBECONFIG), the dashboard's in headless Chromium
	@hack/debian-packages.sh "make e2e (the dashboard's browser test, smoke's port checks)" chromium:chromium chromedriver:chromium-driver python3:python3
	tests/cluster/smoke.sh
	@# Namespaces an interrupted earlier run left behind would hold the nodes' pod slots.
	source tests/cluster/env.sh && kubectl delete namespace -l crane.dev/e2e=true --ignore-not-found --timeout=120s
	source tests/cluster/env.sh && $(CARGO) test --locked --test e2e -- --test-threads $(E2E_THREADS)

# One test at a time: some scenarios stop kube-apiserver and etcd of the local cluster
# (they fail on another KUBECONFIG). CRANE_CHAOS_SEED=N replays a run; the figures are the
# `chaos[...]` lines.
chaos: cluster ## Chaos tests: operator SIGKILLs, API server and etcd restarts, tampering, 100 CRs (seeded)
	source tests/cluster/env.sh && $(CARGO) test --locked --test chaos -- --test-threads 1 --nocapture

# First the local cluster's prerequisites (root, Debian or Ubuntu): missing, they fail the
# run at once rather than after lint and the unit tests.
prerequisites:
	@tests/cluster/prerequisites.sh

# make simulate: the controller in seeded worlds (tests/simulate/main.rs). Its own profile
# (optimised, assertions on) and flags: a seeded tokio runtime (tokio_unstable) and the
# simulation's own getrandom, which std finds through the dynamic symbol table (-rdynamic).
SEEDS ?= 300
TEST_SEEDS ?= 2000
SIMULATE_RUSTFLAGS := --cfg tokio_unstable -C link-arg=-rdynamic
simulate: ## The whole controller against a simulated API server and cluster in seeded worlds: SEEDS=N from FIRST=S, SEED=S replays one (its trace; SIMULATE_LOG=debug adds the operator's log)
	@echo "[simulate] building the simulation (profile simulate; the first build takes several minutes)"
	RUSTFLAGS="$(SIMULATE_RUSTFLAGS)" SEEDS="$(SEEDS)" SEED="$(SEED)" FIRST="$(FIRST)" FAIL_FAST="$(FAIL_FAST)" REGRESSIONS="$(REGRESSIONS)" $(CARGO) test --locked --profile simulate --test simulate

test: prerequisites lint unit simulate-test chart incluster e2e chaos bench-smoke ## Everything CI runs (as root, on Debian or Ubuntu)

simulate-test:
	$(MAKE) simulate SEEDS=$(TEST_SEEDS) SEED= FIRST=1

# make bench runs the local cluster with 100 nodes (room for 10,000 pods) and without the
# client-side rate limits of kube-controller-manager and kube-scheduler (crane-operator has
# none); a later `make cluster` recreates it with the defaults. BENCH_ARGS: see
# `cargo bench --bench bench -- --help`.
BENCH_NODES ?= 100
BENCH_CLUSTER_ARGS ?= kube-controller-manager=kube-api-qps=1000 kube-controller-manager=kube-api-burst=1000 \
  kube-controller-manager=concurrent-replicaset-syncs=5 kube-scheduler=kube-api-qps=1000 kube-scheduler=kube-api-burst=1000
BENCH_ARGS ?=

bench: ## Benchmarks vs the native ReplicaSet controller and raw pod creation: target/bench/report.md
	CRANE_NODES=$(BENCH_NODES) CRANE_EXTRA_ARGS="$(BENCH_CLUSTER_ARGS)" tests/cluster/up.sh
	source tests/cluster/env.sh && $(CARGO) bench --locked --bench bench -- $(BENCH_ARGS)

# Not in make bench (nor make test): 100,000 pods take the 2-core machine most of an hour.
# FLEET=OBJECTSxPODS sets the size; the report goes to target/bench-fleet/.
FLEET ?= 10000x10

bench-fleet: ## The fleet step: 10,000 objects x 10 pods vs kube-controller-manager (FLEET=); target/bench-fleet/report.md
	$(MAKE) bench BENCH_ARGS="--only fleet --fleet $(FLEET) --out target/bench-fleet $(BENCH_ARGS)"

bench-smoke: cluster ## A tiny run of the benchmark harness (checks that it works, not timings)
	source tests/cluster/env.sh && $(CARGO) test --locked --bench bench -- --smoke --out target/bench-smoke
