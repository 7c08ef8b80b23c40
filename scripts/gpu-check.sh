#!/usr/bin/env bash
# On a machine with NVIDIA GPUs: starts `batchai dev` (server, scheduler and a local agent, on
# SQLite, process runtime so Docker is not needed), creates a one-node cluster and runs
# examples/gpu/cuda_check.py as a job through the REST API. The job checks that it sees exactly
# the GPUs the agent gave it and trains a few hundred gradient steps on GPU 0 (Python 3 and the
# NVIDIA driver only). Prints the job's output; exits 0 when the job succeeded.
#
# Usage: scripts/gpu-check.sh            (binary: $BATCHAI_BIN, else target/release/batchai,
#                                          else $CARGO_TARGET_DIR/release/batchai)
# Needs: nvidia-smi, python3, curl. Exit 2: this is not an NVIDIA machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

bin=${BATCHAI_BIN:-}
for candidate in "$repo/target/release/batchai" "${CARGO_TARGET_DIR:-/var/tmp/batchai-target}/release/batchai"; do
    [[ -z $bin && -x $candidate ]] && bin=$candidate
done
[[ -n $bin && -x $bin ]] || { echo "gpu-check: no batchai binary (cargo build --release -p batchai, or BATCHAI_BIN)" >&2; exit 1; }
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    [[ -n ${GPU_CHECK_FORCE:-} ]] || { echo "gpu-check: no NVIDIA GPU here (nvidia-smi -L fails)" >&2; exit 2; }
fi
for tool in python3 curl; do
    command -v $tool >/dev/null || { echo "gpu-check: needs $tool" >&2; exit 1; }
done

work=$(mktemp -d /tmp/batchai-gpu-check.XXXXXX)
dev_pid=
cleanup() {
    [[ -n $dev_pid ]] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null
    [[ -n ${GPU_CHECK_KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

echo "gpu-check: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | xargs)"
BATCHAI_RUNTIME=process BATCHAI_AGENT_MAX_WAIT_MS=1000 RUST_LOG=${RUST_LOG:-warn} \
    "$bin" dev --data-dir "$work/data" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 600); do
    [[ -s $work/data/dev.env ]] && break
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.log" >&2; echo "gpu-check: batchai dev exited" >&2; exit 1; }
    sleep 0.1
done
[[ -s $work/data/dev.env ]] || { cat "$work/dev.log" >&2; echo "gpu-check: batchai dev did not start" >&2; exit 1; }
# shellcheck disable=SC1091
source "$work/data/dev.env"

api() { # METHOD PATH [JSON]: the response body; fails on HTTP errors, showing the body
    local out status
    out=$(curl -sS --cacert "$BATCHAI_CA_CERT" -H "Authorization: Bearer $BATCHAI_TOKEN" \
        -H 'Content-Type: application/json' -X "$1" ${3:+--data "$3"} -w '\n%{http_code}' "${BATCHAI_URL%/}$2")
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    if [[ $status -ge 400 ]]; then echo "gpu-check: $1 $2 -> $status $out" >&2; return 1; fi
    printf '%s' "$out"
}
field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=(v or {}).get(k)
print("" if v is None else v)' "$1"; }

sub=/subscriptions/$AZURE_SUBSCRIPTION_ID
ws=$sub/resourceGroups/gpucheck/providers/Microsoft.BatchAI/workspaces/ws
v='api-version=2018-05-01'
api PUT "$sub/resourcegroups/gpucheck?api-version=2021-04-01" '{"location":"eastus"}' >/dev/null
api PUT "$ws?$v" '{"location":"eastus"}' >/dev/null
api PUT "$ws/experiments/exp?$v" '{}' >/dev/null
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
api PUT "$ws/clusters/gpu?$v" '{"properties":{"vmSize":"STANDARD_NC6",
  "scaleSettings":{"manual":{"targetNodeCount":1}},
  "userAccountSettings":{"adminUserName":"gpucheck","adminUserPassword":"Pa55w0rd!"},
  "nodeSetup":{"mountVolumes":{"azureFileShares":[{"accountName":"gpucheck","azureFileUrl":"https://gpucheck.file.core.windows.net/share",
    "credentials":{"accountKey":"a2V5"},"relativeMountPath":"afs"}]}}}}' >/dev/null
for _ in $(seq 300); do
    idle=$(api GET "$ws/clusters/gpu?$v" | field properties.nodeStateCounts.idleNodeCount)
    [[ $idle == 1 ]] && break
    sleep 0.2
done
[[ $idle == 1 ]] || { echo "gpu-check: the cluster never got its node" >&2; tail -20 "$work/dev.log" >&2; exit 1; }

job=$ws/experiments/exp/jobs/cuda-check
api PUT "$job?$v" "{\"properties\":{\"cluster\":{\"id\":\"$ws/clusters/gpu\"},\"nodeCount\":1,
  \"stdOutErrPathPrefix\":\"\$AZ_BATCHAI_MOUNT_ROOT/afs\",
  \"customToolkitSettings\":{\"commandLine\":\"python3 $repo/examples/gpu/cuda_check.py\"}}}" >/dev/null
for _ in $(seq 1800); do
    state=$(api GET "$job?$v" | field properties.executionState)
    [[ $state == succeeded || $state == failed ]] && break
    sleep 0.2
done
echo "gpu-check: job $state ($gpus GPU(s) on the node)"
for f in stdout.txt stderr.txt execution.log; do
    path=$(find "$work/data/storage" -path "*cuda-check*" -name "$f" | head -1)
    [[ -n $path ]] && { echo "----- $f"; cat "$path"; }
done
api GET "$job?$v" | field properties.executionInfo
[[ $state == succeeded ]]
