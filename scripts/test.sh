#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, Rust unit/integration tests (SQLite and
# Postgres), the deployment files' checks, and the Python SDK suite against real server processes.
#   scripts/test.sh            everything
#   SKIP_LINT=1 scripts/test.sh  without fmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/batchai-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

# promtool (Debian's prometheus package) checks the /metrics expositions in the Rust tests;
# without it they say so and carry on, except under CI.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  step "promtool"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi

step "postgres"
BATCHAI_TEST_PG_URL="$(scripts/postgres.sh)"
export BATCHAI_TEST_PG_URL

# Job images for the Docker runtime tests (no registry needed). Without an engine the Docker
# tests skip themselves, except under CI, where they fail.
if docker info >/dev/null 2>&1; then
  step "job images"
  scripts/build-images.sh
fi

if [ -z "${SKIP_LINT:-}" ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

step "cargo build"
cargo build --workspace --locked
export BATCHAI_BIN="$CARGO_TARGET_DIR/debug/batchai"

# docker-compose.yml's images (Postgres from Debian's packages, server and agent with the binary
# just built), for the compose smoke test in the SDK suite (tests/sdk/test_compose.py).
if docker info >/dev/null 2>&1; then
  step "compose images"
  if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null
  fi
  scripts/build-images.sh farm
fi

# deploy/systemd, deploy/kubernetes, deploy/prometheus and deploy/grafana, offline
# (systemd-analyze, Kubernetes schemas, promtool; the command lines against the binary just
# built), and that the checks catch known breakages. Without systemd-analyze or promtool, and
# without root, it skips those parts, except under CI.
step "deploy files (systemd, Kubernetes, Prometheus, Grafana)"
scripts/check-deploy.sh --self-test

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "python SDK suite"
venv="$(scripts/sdk-venv.sh)"
"$venv/bin/python" -m pytest tests/sdk -q -p no:cacheprovider
