# flowaudit — entry points. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# One build shared by demo and test (dev profile, optimised dependencies); outside the clone so
# CI and fresh clones reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flowaudit-target
VENV        := .venv
PY          := $(VENV)/bin/python
BIN         := $(CARGO_TARGET_DIR)/debug/flowaudit
TEST_PORT   ?= 19092
TEST_S3_PORT ?= 19095
# A real IP→country database (CC0, ip-location-db on the npm registry), for the test that loads it
# whole: pinned by version and by the SHA-256 of the package, IPv4 and IPv6 ranges in one CSV.
GEOIP_DB_VERSION := 2.3.2026061719
GEOIP_DB_SHA256  := 2a3e609015884c93c2d398e777ce1d2d34cab026054c43559bff32b25669f606
GEOIP_REAL       := $(HOME)/.cache/flowaudit-data/geo-whois-asn-country-$(GEOIP_DB_VERSION).csv
CARGO       ?= cargo

.PHONY: help deps test-deps venv build demo test bench fmt lint clean geoip-db

help: ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

deps: ## Install the system packages the build needs (idempotent; apt when missing)
	@missing=""; \
	command -v cc >/dev/null || missing="$$missing build-essential"; \
	pkg-config --exists openssl 2>/dev/null || missing="$$missing libssl-dev pkg-config"; \
	command -v perl >/dev/null || missing="$$missing perl"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && apt-get install -y -qq $$missing; fi

venv: $(VENV)/.installed ## Python venv: Tansu broker, moto S3 server, confluent-kafka, pyarrow, duckdb

$(VENV)/.installed: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

build: deps ## Build the flowaudit binary
	$(CARGO) build --bins

demo: build ## Run the pipeline end to end on an embedded broker
	$(BIN) demo --out demo-out

test-deps: geoip-db ## What only the tests need: Chromium (the report's rendering test), the real GeoIP database
	@command -v chromium >/dev/null || { echo "installing: chromium"; apt-get update -qq && apt-get install -y -qq chromium; }

geoip-db: $(GEOIP_REAL) ## Fetch the real IP→country database (npm registry, pinned) into ~/.cache

$(GEOIP_REAL):
	@command -v npm >/dev/null || { echo "installing: npm"; apt-get update -qq && apt-get install -y -qq npm; }
	@mkdir -p $(@D); tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	  ( cd "$$tmp" && npm pack --silent @ip-location-db/geo-whois-asn-country@$(GEOIP_DB_VERSION) >/dev/null ) && \
	  tgz=$$(ls "$$tmp"/*.tgz) && echo "$(GEOIP_DB_SHA256)  $$tgz" | sha256sum -c --quiet && \
	  tar xzf "$$tgz" -C "$$tmp" && \
	  cat "$$tmp"/package/geo-whois-asn-country-ipv4.csv "$$tmp"/package/geo-whois-asn-country-ipv6.csv > $@.tmp && \
	  mv $@.tmp $@ && echo "GeoIP database: $@"

test: build venv test-deps ## Unit and integration tests against a real Kafka-protocol broker and S3 server
	@# The summary counts this run's output only (another run may share the target directory).
	set -o pipefail; log=$$(mktemp -t flowaudit-test.XXXXXX.log); \
	scripts/with-broker.sh $(TEST_PORT) scripts/with-s3.sh $(TEST_S3_PORT) env FLOWAUDIT_PYTHON=$(CURDIR)/$(PY) FLOWAUDIT_REAL_GEOIP=$(GEOIP_REAL) \
		$(CARGO) test --workspace -- --test-threads 2 2>&1 | tee "$$log"; rc=$$?; \
	awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' "$$log"; \
	cp "$$log" $(CARGO_TARGET_DIR)/test-output.log; rm -f "$$log"; exit $$rc

bench: deps venv geoip-db ## Benchmarks on an optimised build (figures and method: docs/benchmarks.md)
	$(CARGO) build --release --bins
	$(PY) scripts/bench.py $(CARGO_TARGET_DIR)/release/flowaudit bench-out
	$(PY) scripts/bench_rules.py $(CARGO_TARGET_DIR)/release/flowaudit bench-out
	$(PY) scripts/bench_sql.py $(CARGO_TARGET_DIR)/release/flowaudit bench-out
	$(PY) scripts/bench_geoip.py $(CARGO_TARGET_DIR)/release/flowaudit $(GEOIP_REAL)

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Clippy and format check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Coverage-guided fuzzing with cargo-afl on stable Rust (its own build in
# ~/.cache/flowaudit-fuzz-target); `make test` replays the committed corpus. docs/fuzzing.md.
FUZZ_SECONDS ?= 180
FUZZ_TARGETS ?=
.PHONY: fuzz
fuzz: deps ## Fuzz every decoder and parser, FUZZ_SECONDS each (default 180); prints inputs run and crashes
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh $(FUZZ_TARGETS)

clean: ## Remove demo output (the shared build cache is kept)
	rm -rf demo-out bench-out
