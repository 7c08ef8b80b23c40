#!/usr/bin/env bash
# Offline checks of the deployment files (no running systemd, no cluster, no network once the
# tools are installed):
#   deploy/systemd/     systemd-analyze verify of the units, installed in a scratch root with a
#                       stand-in for /usr/local/bin/batchai; systemd-analyze security --offline with
#                       an exposure ceiling per unit; systemd-sysusers --dry-run of the sysusers
#                       file; the example TOML configs and env files against batchai's config keys
#   deploy/kubernetes/  every object against the Kubernetes JSON schemas shipped in the pinned
#                       kubernetes-validate package (strict, Kubernetes $K8S_VERSIONS), duplicate
#                       YAML keys, and the references between the manifests (scripts/check_deploy.py)
#   both                the ExecStart= and container command lines, with `--help`, against the
#                       batchai binary ($BATCHAI_BIN, else $CARGO_TARGET_DIR/debug/batchai) when
#                       one is built
#   deploy/prometheus/  promtool check config of the scrape configs (their rule files must
#                       resolve), promtool check rules and promtool test rules of the alerts;
#                       the jobs they scrape and the metrics the rules query (check_deploy.py)
#   deploy/grafana/     the dashboards' structure, their queries' metrics (check_deploy.py) and
#                       syntax (promtool check rules), and promtool test rules of their tests
#   docker-compose.yml  `docker-compose config` (or `docker compose config`) when one is here,
#                       and check_deploy.py's compose check (environment, mounted files, build
#                       targets, deploy/compose/env.example)
#
#   scripts/check-deploy.sh               check the files; exits 1 on any problem
#   scripts/check-deploy.sh --self-test   also break copies of them in known ways, and fail
#                                          unless every breakage is caught
#
# Installs what it needs, idempotently: Debian's systemd package (for systemd-analyze) when run
# as root, and a venv with scripts/check-deploy-requirements.txt at
# ${BATCHAI_DEPLOY_VENV:-/var/tmp/batchai-deploy-venv} (reinstalled only when that file changes).
# Without systemd-analyze and without root, the systemd checks are skipped with a message, except
# under CI=true, where that is an error. Likewise promtool (Debian's prometheus package) for the
# promtool checks of deploy/prometheus/ and deploy/grafana/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
K8S_VERSIONS="1.25.0 1.37.0"
# Overall exposure (systemd-analyze security, 0 = locked down, 10 = unrestricted). The server
# scores 1.2; the agent, a root service that mounts file systems and starts jobs, 8.1. A change
# that loosens either past its ceiling fails.
declare -A MAX_EXPOSURE=([batchai-server.service]=2.0 [batchai-agent.service]=8.5)

log() { echo "check-deploy: $*" >&2; }
scratch=$(mktemp -d /tmp/batchai-check-deploy.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# --- tools -------------------------------------------------------------------------------------

have_systemd=1
if ! command -v systemd-analyze >/dev/null || ! command -v systemd-sysusers >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing systemd (for systemd-analyze)"
        if ! (export DEBIAN_FRONTEND=noninteractive
              apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd) >"$scratch/apt.log" 2>&1; then
            tail -20 "$scratch/apt.log" >&2
            log "installing systemd failed"
            exit 1
        fi
        if ! command -v systemd-analyze >/dev/null || ! command -v systemd-sysusers >/dev/null; then
            log "systemd-analyze or systemd-sysusers still missing after installing systemd"
            exit 1
        fi
    elif [[ ${CI:-} == true ]]; then
        log "systemd-analyze is missing and cannot be installed without root"
        exit 1
    else
        log "SKIPPING the systemd checks: systemd-analyze is missing (apt-get install systemd as root)"
        have_systemd=0
    fi
fi

have_promtool=1
if ! command -v promtool >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing prometheus (for promtool)"
        if ! { apt-get update -qq &&
               DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >"$scratch/apt-prometheus.log" 2>&1; then
            tail -20 "$scratch/apt-prometheus.log" >&2
            log "installing prometheus failed"
            exit 1
        fi
        if ! command -v promtool >/dev/null; then
            log "promtool still missing after installing prometheus"
            exit 1
        fi
    elif [[ ${CI:-} == true ]]; then
        log "promtool is missing and cannot be installed without root"
        exit 1
    else
        log "SKIPPING the promtool checks: promtool is missing (apt-get install prometheus as root)"
        have_promtool=0
    fi
fi
# Debian builds Prometheus without Kubernetes service discovery: its promtool refuses
# kubernetes_sd_configs. Then check_deploy.py checks those blocks itself and hands promtool
# copies of the configs without them.
promtool_sd_flag=
if [[ $have_promtool == 1 ]]; then
    printf 'scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs: [{role: pod}]\n' >"$scratch/sd-probe.yml"
    if ! promtool check config "$scratch/sd-probe.yml" >/dev/null 2>&1; then
        promtool_sd_flag=--without-kubernetes-sd
    fi
fi

venv=${BATCHAI_DEPLOY_VENV:-/var/tmp/batchai-deploy-venv}
req=$repo/scripts/check-deploy-requirements.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
stamp=$venv/.batchai-requirements.sha256
if [[ ! -x $venv/bin/python ]]; then
    log "creating $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing $(basename "$req")"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    "$venv/bin/python" -m pip check >&2
    echo "$want" >"$stamp"
fi
py=$venv/bin/python

bin=${BATCHAI_BIN:-${CARGO_TARGET_DIR:-/var/tmp/batchai-target}/debug/batchai}
[[ -x $bin ]] || bin=

# --- checks ------------------------------------------------------------------------------------

# Runs "$@"; passes when it exits 0 and prints nothing (systemd-analyze only warns about unknown
# or unparsable settings, and exits 0). What it said is left in $said.
said=
quiet_ok() {
    local rc=0
    said=$("$@" 2>&1) || rc=$?
    [[ $rc -eq 0 && -z $said ]] && return 0
    said=${said:-exit status $rc}
    return 1
}
indent() { printf '%s\n' "$1" | sed 's/^/    /'; }

# A scratch root for systemd-analyze --root: the system's own units (targets and the like that
# the units depend on), the units under test in /etc/systemd/system, and an executable stand-in
# for batchai where docs/operations.md installs it. The units are verified unchanged, at their
# real paths; one naming another binary fails ("Command ... is not executable").
INSTALLED_BIN=/usr/local/bin/batchai
make_root() { # ROOT UNIT...
    local root=$1
    shift
    mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root$(dirname "$INSTALLED_BIN")"
    cp -a "$(readlink -f /usr/lib/systemd/system)" "$root/usr/lib/systemd/system"
    cp "$@" "$root/etc/systemd/system/"
    printf '#!/bin/sh\nexit 0\n' >"$root$INSTALLED_BIN"
    chmod +x "$root$INSTALLED_BIN"
}

check_systemd() { # DIR
    local dir=$1 ok=0 root unit name score units=()
    for unit in "$dir"/*.service; do units+=("$unit"); done
    root=$(mktemp -d "$scratch/root.XXXXXX")
    make_root "$root" "${units[@]}"
    local names=("${units[@]##*/}")
    if quiet_ok systemd-analyze verify --man=no --generators=no --root="$root" "${names[@]}"; then
        echo "ok: systemd-analyze verify ${names[*]}"
    else
        echo "FAILED: systemd-analyze verify ${names[*]}"
        indent "$said"
        ok=1
    fi
    for name in "${names[@]}"; do
        local max=${MAX_EXPOSURE[$name]:-}
        if [[ -z $max ]]; then
            echo "FAILED: $name has no exposure ceiling in MAX_EXPOSURE of $0"
            ok=1
            continue
        fi
        local out rc=0
        out=$(systemd-analyze security --offline=yes --root="$root" --threshold="${max/./}" --no-pager "$name" 2>&1) || rc=$?
        score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
        if [[ $rc -eq 0 && -n $score ]]; then
            echo "ok: systemd-analyze security $name: exposure $score (ceiling $max)"
        else
            echo "FAILED: systemd-analyze security $name: exposure ${score:-?} over the ceiling $max (or the unit did not load)"
            grep -v '^✓' <<<"$out" | grep -v '^ *$' | tail -15 | sed 's/^/    /'
            ok=1
        fi
    done
    for unit in "$dir"/*sysusers*.conf; do
        [[ -e $unit ]] || continue
        # Against the scratch root, writing nothing. Its plan ("Creating user ...", "Would
        # write ...") goes to stderr with any complaint: anything else is one.
        local out rc=0
        out=$(systemd-sysusers --root="$root" --dry-run "$(readlink -f "$unit")" 2>&1) || rc=$?
        out=$(grep -v "^Creating \(group\|user\) \|^Would write " <<<"$out" || true)
        if [[ $rc -eq 0 && -z $out ]]; then
            echo "ok: systemd-sysusers --dry-run ${unit##*/}"
        else
            echo "FAILED: systemd-sysusers --dry-run ${unit##*/}"
            printf '%s\n' "${out:-exit status $rc}" | sed 's/^/    /'
            ok=1
        fi
    done
    return $ok
}

# Runs promtool with ARGS; prints ok, or FAILED with what promtool said.
promtool_step() { # WHAT ARGS...
    local what=$1 out rc=0
    shift
    out=$(promtool "$@" 2>&1) || rc=$?
    if [[ $rc -eq 0 ]]; then
        echo "ok: $what"
        return 0
    fi
    echo "FAILED: $what (exit status $rc)"
    # Without promtool's progress lines, so that the complaint comes first, and once.
    grep -v '^ *$\|^ *SUCCESS\|^ *FAILED:$\|^Checking \|^Unit Testing: ' <<<"$out" | uniq | head -30 | sed 's/^/    /'
    return 1
}

check_monitoring() { # PROMETHEUS_DIR GRAFANA_DIR
    local prom=$1 graf=$2 ok=0 out f
    out=$(mktemp -d "$scratch/monitoring.XXXXXX")
    # shellcheck disable=SC2086 # an optional flag
    "$py" "$repo/scripts/check_deploy.py" monitoring "$prom" "$graf" "$out" $promtool_sd_flag || ok=1
    if [[ $have_promtool == 0 ]]; then
        echo "skipped: promtool checks of $prom and $graf (no promtool)"
        return $ok
    fi
    local configs=() rules=() tests=()
    for f in "$prom"/*.yml; do
        case ${f##*/} in
            prometheus*.yml)
                # The copy without kubernetes_sd_configs when check_deploy.py wrote one.
                if [[ -n $promtool_sd_flag && -f $out/${f##*/} ]]; then
                    configs+=("$out/${f##*/}")
                else
                    configs+=("$f")
                fi
                ;;
            *_test.yml) tests+=("$f") ;;
            *) rules+=("$f") ;;
        esac
    done
    for f in "$graf"/*.test.yml; do [[ -e $f ]] && tests+=("$f"); done
    promtool_step "promtool check config ${configs[*]##*/}${promtool_sd_flag:+ (kubernetes_sd_configs left out)}" \
        check config "${configs[@]}" || ok=1
    promtool_step "promtool check rules ${rules[*]##*/}" check rules --lint=all --lint-fatal "${rules[@]}" || ok=1
    promtool_step "promtool test rules ${tests[*]##*/}" test rules "${tests[@]}" || ok=1
    if [[ -f $out/dashboard-rules.yml ]]; then
        promtool_step "promtool check rules: the queries of ${graf##*/}/*.json" check rules "$out/dashboard-rules.yml" || ok=1
    fi
    return $ok
}

# `docker-compose config` with the required secrets set: the file is valid compose.
compose_cli=()
if command -v docker-compose >/dev/null; then
    compose_cli=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose_cli=(docker compose)
fi
check_compose() { # COMPOSE_FILE ENV_EXAMPLE
    local ok=0 out
    "$py" "$repo/scripts/check_deploy.py" compose "$1" "$2" || ok=1
    if ((${#compose_cli[@]} == 0)); then
        echo "skipped: compose config of $1 (no docker-compose or docker compose)"
        return $ok
    fi
    if out=$(env BATCHAI_POSTGRES_PASSWORD=check BATCHAI_JOIN_TOKEN=check "${compose_cli[@]}" \
        --project-directory "$(dirname "$1")" -f "$1" --profile monitoring config -q 2>&1); then
        echo "ok: compose config of $1 (with --profile monitoring)"
    else
        echo "FAILED: compose config of $1"
        sed 's/^/    /' <<<"$out" | head -20
        ok=1
    fi
    return $ok
}

check_all() { # DEPLOY_DIR (docker-compose.yml beside it)
    local sd=$1/systemd k8s=$1/kubernetes ok=0
    if [[ $have_systemd == 1 ]]; then
        check_systemd "$sd" || ok=1
    fi
    local configs=("$sd"/*.toml "$sd"/*.env.example)
    "$py" "$repo/scripts/check_deploy.py" config "${configs[@]}" || ok=1
    # shellcheck disable=SC2086 # the versions are words
    "$py" "$repo/scripts/check_deploy.py" kubernetes "$k8s" $K8S_VERSIONS || ok=1
    if [[ -n $bin ]]; then
        "$py" "$repo/scripts/check_deploy.py" commands "$bin" "$sd"/*.service "$k8s" || ok=1
    else
        echo "skipped: command lines (no batchai binary; set BATCHAI_BIN)"
    fi
    check_monitoring "$1/prometheus" "$1/grafana" || ok=1
    check_compose "$1/../docker-compose.yml" "$1/compose/env.example" || ok=1
    return $ok
}

# --- self-test ---------------------------------------------------------------------------------

# Each case breaks a fresh copy of deploy/ with a sed script on one file; the check must fail.
# A fourth field names a tool the case needs (skipped without it).
self_test() {
    local cases=(
        "systemd/batchai-server.service|s/^ProtectSystem=strict/ProtectSytem=strict/|a misspelt setting"
        "systemd/batchai-agent.service|s/^TimeoutStopSec=90s/TimeoutStopSec=ninety/|an unparsable value"
        "systemd/batchai-server.service|s/^ExecStart=\/usr\/local\/bin\/batchai /ExecStart=\/usr\/local\/bin\/batchia /|a binary that is not there"
        "systemd/batchai-server.service|/^# Sandboxing/,/^SystemCallErrorNumber/d|the server's sandboxing removed"
        "systemd/batchai-sysusers.conf|s/^u batchai - /u batchai nobody-knows /|a bad sysusers line"
        "systemd/server.toml|s/^files_listen =/file_listen =/|an unknown config key"
        "systemd/agent.env.example|s/^BATCHAI_JOIN_TOKEN=/BATCHAI_JOINTOKEN=/|an env variable batchai ignores"
        "kubernetes/server.yaml|s/readOnlyRootFilesystem: true/readOnlyRootFileSystem: true/|an unknown field"
        "kubernetes/agent.yaml|s/terminationGracePeriodSeconds: 90/terminationGracePeriodSeconds: ninety/|a wrong type"
        "kubernetes/agent.yaml|s/key: join-token/key: join_token/|a Secret key that does not exist"
        "kubernetes/server.yaml|s/claimName: batchai-data/claimName: batchai-dta/|a claim that does not exist"
        "kubernetes/server.yaml|s/^    storage_root = /    storage_rot = /|an unknown key in a ConfigMap's TOML"
        "kubernetes/storage.yaml|s/^  storageClassName: \"\"/  storageClassName: \"\"\n  storageClassName: nfs/|a duplicate key"
        "kubernetes/agent.yaml|s/^      runtimeClassName: nvidia/      runtimeClassName: nvidia-typo/|an undefined RuntimeClass"
        "prometheus/alerts.yml|s/expr: up{job=\"batchai-agent\"} == 0/expr: up{job=\"batchai-agent\"} == = 0/|a broken rule expression|promtool"
        "prometheus/alerts.yml|s/^        for: 15m/        for: 5m/|a rule changed without its tests (a failing rule test)|promtool"
        "prometheus/alerts_test.yml|s/summary: 2 batchai node(s) unusable/summary: 4 batchai node(s) unusable/|a rule test that expects the wrong alert|promtool"
        "prometheus/alerts.yml|s/batchai_agent_sync_failures_total/batchai_agent_sync_failure_total/|a rule querying an unknown metric"
        "prometheus/prometheus.yml|s/^  - alerts.yml/  - alert.yml/|a rule file that does not exist|promtool"
        "prometheus/prometheus-kubernetes.yml|s/^      - role: pod/      - role: pods/|an unknown Kubernetes discovery role|promtool"
        "prometheus/prometheus.yml|s/job_name: batchai-agent/job_name: batchai-agents/|a scrape job the rules do not select"
        "grafana/batchai-farm.json|s/max by (state) (batchai_nodes{/max by (state) (batchai_node{/|a dashboard query of an unknown metric"
        "grafana/batchai-farm.json|s/histogram_quantile(0.9, /histogram_quantile(0.9 /|a dashboard query that does not parse|promtool"
        "grafana/batchai-farm.json|s/\"id\": 12,/\"id\": 11,/|two panels with one id"
        "grafana/batchai-farm.json|s/\"uid\": \"\${datasource}\"/\"uid\": \"P1809F7CD0C75ACF3\"/|a data source of one installation"
        "grafana/batchai-farm.json|s/avg by (exported_job) (DCGM/max by (exported_job) (DCGM/|a panel changed without its test"
        "grafana/batchai-farm.json|1s/^{/{,/|invalid JSON"
        "grafana/batchai-farm.test.yml|s/value: 0.75/value: 0.5/|a dashboard test that fails|promtool"
        "../docker-compose.yml|s/BATCHAI_FILES_LISTEN:/BATCHAI_FILE_LISTEN:/|a compose variable batchai ignores"
        "../docker-compose.yml|s/target: agent/target: agnet/|a compose build target that is no stage"
        "../docker-compose.yml|s/prometheus-compose.yml:/prometheus-compose.yaml:/|a compose mount of a missing file"
        "../docker-compose.yml|s/^    profiles: \[monitoring\]/    profile: [monitoring]/|an invalid compose file|compose"
        "compose/env.example|/^#BATCHAI_GRAFANA_PORT=/d|a compose variable left out of env.example"
    )
    [[ -n $bin ]] && cases+=("systemd/batchai-agent.service|s/ agent$/ agent --storage-rot \/mnt/|a flag the binary refuses")
    local failed=0 spec file script what needs n=0
    for spec in "${cases[@]}"; do
        IFS='|' read -r file script what needs <<<"$spec"
        if [[ $have_systemd == 0 && ($file == *.service || $file == *sysusers*) ]]; then
            continue
        fi
        if [[ ($have_promtool == 0 && $needs == promtool) || (${#compose_cli[@]} == 0 && $needs == compose) ]]; then
            continue
        fi
        n=$((n + 1))
        local copy=$scratch/case$n/deploy
        mkdir -p "$copy"
        cp -a "$repo/deploy/systemd" "$repo/deploy/kubernetes" "$repo/deploy/prometheus" "$repo/deploy/grafana" \
            "$repo/deploy/compose" "$repo/deploy/images" "$copy/"
        cp "$repo/docker-compose.yml" "$copy/.."
        sed -i -e "$script" "$copy/$file"
        if cmp -s "$repo/deploy/$file" "$copy/$file"; then
            echo "self-test FAILED: case '$what' did not change deploy/$file (stale sed script)"
            failed=1
            continue
        fi
        local out
        if out=$(check_all "$copy" 2>&1); then
            echo "self-test FAILED: $what in deploy/$file was not caught"
            failed=1
        else
            echo "self-test ok: $what in deploy/$file is caught:"
            grep -m2 -v '^ok: \|^skipped: \|^FAILED: [0-9]* problem' <<<"$out" | sed 's/^/    /'
        fi
    done
    return $failed
}

cd "$repo"
status=0
check_all deploy || status=1
if [[ $status == 0 && ${1:-} == --self-test ]]; then
    self_test || status=1
fi
if [[ $status != 0 ]]; then
    log "FAILED: see the lines above"
fi
exit $status
