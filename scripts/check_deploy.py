"""Offline checks of the deployment files, run by scripts/check-deploy.sh in its venv.

  python scripts/check_deploy.py kubernetes DIR VERSION...   the manifests in DIR
  python scripts/check_deploy.py config FILE...              TOML configs and env files
  python scripts/check_deploy.py commands BIN UNIT... DIR    command lines, against a binary
  python scripts/check_deploy.py monitoring PROMETHEUS_DIR GRAFANA_DIR OUT [--without-kubernetes-sd]
                                                            rules, scrape configs, dashboards
  python scripts/check_deploy.py compose COMPOSE_FILE ENV_EXAMPLE
                                                            docker-compose.yml

kubernetes: every document of every *.yaml in DIR is validated against the Kubernetes JSON
schemas that the pinned kubernetes-validate package ships (strict: unknown fields are errors;
a kind without a schema is an error), for each VERSION; YAML with duplicate keys is refused (the
API server refuses it too); and the manifests must fit together: every ConfigMap, Secret (and
key), PersistentVolumeClaim and volume they refer to is defined, selectors select the pod
templates, Service target ports are container ports, and the embedded TOML configs pass the
config check.

config: every top-level key of a TOML file (*.toml), and every BATCHAI_<KEY> of an env file,
must be a field of batchai's Config (crates/batchai/src/config.rs): batchai ignores unknown keys
silently, so a typo would otherwise go unnoticed.

commands: every ExecStart= of the units and every container command of the manifests in DIR
is run with the batchai binary BIN and `--help` appended, which must succeed: the subcommand
and flags exist (clap checks them before --help prints anything; nothing else runs).

compose: docker-compose.yml, beside what `docker-compose config` checks (check-deploy.sh runs
it): no duplicate keys; the services postgres, server and agent; every BATCHAI_* variable the
server and agent get sets a configuration key; every file mounted from the repository and every
Dockerfile exists, with the build target as a stage; every ${VARIABLE} the file reads is
described in ENV_EXAMPLE, and ENV_EXAMPLE names no variable the file does not read.

monitoring: deploy/prometheus/ and deploy/grafana/ (promtool itself is run by
scripts/check-deploy.sh, on what this writes into OUT):
  - every PromQL expression of the rule files, the dashboards' targets and query variables and
    the rule tests queries only metrics of KNOWN_METRICS (below), `up`, or what the rule files
    record; the batchai ones must be named in the metrics.rs that exposes them;
  - each Prometheus config (prometheus*.yml) scrapes the jobs batchai-server and batchai-agent
    that the rules and dashboards select;
  - each dashboard (*.json) is valid JSON with a title, uid and schemaVersion, a `datasource`
    variable of type datasource that every panel and target uses (no data source of one
    installation), unique panel ids, panels on the 24-column grid without overlaps, targets
    with an expression and unique refIds, and only defined $variables; its expressions, with
    the variables replaced, go into OUT/dashboard-rules.yml for `promtool check rules`;
  - every expression of a dashboard test (*.test.yml beside the dashboards, `promtool test
    rules`) is one of the dashboards' expressions (so the tests test what the panels show);
  - with --without-kubernetes-sd (a promtool built without Kubernetes discovery, as Debian's
    is): the kubernetes_sd_configs blocks are checked here (roles, keys), and copies of the
    configs with those blocks replaced by empty static_configs go into OUT for promtool.

Prints one line per problem and exits 1 when there is any.
"""

import os
import re
import sys

if sys.version_info < (3, 11):
    sys.exit("check_deploy.py needs Python 3.11 or newer (tomllib)")

import tomllib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_RS = os.path.join(ROOT, "crates", "batchai", "src", "config.rs")
# Read by batchai outside the Config struct.
EXTRA_ENV = {"BATCHAI_CONFIG"}

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def config_keys():
    """The fields of `pub struct Config` in config.rs: the keys batchai reads."""
    with open(CONFIG_RS) as f:
        text = f.read()
    m = re.search(r"^pub struct Config \{\n(.*?)^\}", text, re.S | re.M)
    if not m:
        sys.exit(f"cannot find `pub struct Config` in {CONFIG_RS}")
    keys = set(re.findall(r"^\s+pub (\w+):", m.group(1), re.M))
    if "data_dir" not in keys or "server_url" not in keys:
        sys.exit(f"unexpected layout of `pub struct Config` in {CONFIG_RS}: {sorted(keys)}")
    return keys


def check_toml_text(where, text, keys):
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(where, f"not valid TOML: {e}")
        return
    for key in doc:
        if key not in keys:
            problem(where, f"unknown configuration key {key!r} (batchai would ignore it)")


def check_env_text(where, text, keys):
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=.*", line)
        if not m:
            problem(f"{where}:{n}", f"not a NAME=value line: {line!r}")
            continue
        check_env_name(f"{where}:{n}", m.group(1), keys)


def check_env_name(where, name, keys):
    if name.startswith("BATCHAI_") and name not in EXTRA_ENV and name[8:].lower() not in keys:
        problem(where, f"{name} sets no configuration key (batchai would ignore it)")


def check_config(files):
    keys = config_keys()
    for path in files:
        with open(path) as f:
            text = f.read()
        if path.endswith(".toml"):
            check_toml_text(path, text, keys)
        else:
            check_env_text(path, text, keys)


# --- Kubernetes ---------------------------------------------------------------------------

def strict_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def load_manifests(directory):
    import yaml

    loader = strict_loader()
    docs = []
    files = sorted(f for f in os.listdir(directory) if f.endswith((".yaml", ".yml")))
    if not files:
        problem(directory, "no manifests")
    for name in files:
        path = os.path.join(directory, name)
        with open(path) as f:
            try:
                found = [d for d in yaml.load_all(f, Loader=loader) if d is not None]
            except yaml.YAMLError as e:
                problem(path, "not valid YAML: " + " ".join(str(e).split()))
                continue
        for i, doc in enumerate(found):
            where = f"{path}[{i}]"
            if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
                problem(where, "not a Kubernetes object (apiVersion, kind, metadata)")
                continue
            docs.append((where, doc))
    return docs


def validate_schemas(docs, versions):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    for where, doc in docs:
        what = f"{doc['kind']}/{doc['metadata'].get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                problem(where, f"{what} does not validate against Kubernetes {version}: {path}: {e.message}")
            except SchemaNotFoundError as e:
                problem(where, f"{what}: {e.message}")


def pod_templates(docs):
    for where, doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield where, doc, doc.get("spec", {}).get("template", {})


def check_references(docs, keys):
    objects = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for _, d in docs}
    namespaces = {d["metadata"]["name"] for _, d in docs if d["kind"] == "Namespace"}

    def secret_keys(secret):
        return set(secret.get("data") or {}) | set(secret.get("stringData") or {})

    for where, doc in docs:
        ns = doc["metadata"].get("namespace")
        if ns is not None and ns not in namespaces:
            problem(where, f"namespace {ns!r} is not defined by these manifests")
        if doc["kind"] == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".toml"):
                    check_toml_text(f"{where} ConfigMap {doc['metadata']['name']} key {key}", text, keys)
        if doc["kind"] == "PersistentVolumeClaim" and doc["spec"].get("volumeName"):
            if ("PersistentVolume", None, doc["spec"]["volumeName"]) not in objects:
                problem(where, f"volumeName {doc['spec']['volumeName']!r} is not defined")

    pods = []
    for where, doc, template in pod_templates(docs):
        ns = doc["metadata"].get("namespace")
        spec = template.get("spec", {})
        labels = template.get("metadata", {}).get("labels", {})
        pods.append((ns, labels, spec))
        selector = doc["spec"].get("selector", {}).get("matchLabels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problem(where, f"selector {selector} does not select the pod template's labels {labels}")

        def need(kind, name, what, key=None, optional=False):
            obj = objects.get((kind, ns, name))
            if obj is None:
                if not optional:
                    problem(where, f"{what}: {kind} {ns}/{name} is not defined")
            elif key is not None and kind == "Secret" and key not in secret_keys(obj):
                problem(where, f"{what}: Secret {ns}/{name} has no key {key!r}")
            elif key is not None and kind == "ConfigMap" and key not in (obj.get("data") or {}):
                problem(where, f"{what}: ConfigMap {ns}/{name} has no key {key!r}")

        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            what = f"volume {v['name']}"
            if "configMap" in v:
                for item in v["configMap"].get("items", []) or [None]:
                    need("ConfigMap", v["configMap"]["name"], what, item and item["key"])
            if "secret" in v:
                for item in v["secret"].get("items", []) or [None]:
                    need("Secret", v["secret"]["secretName"], what, item and item["key"])
            if "persistentVolumeClaim" in v:
                need("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], what)
        if spec.get("runtimeClassName") and ("RuntimeClass", None, spec["runtimeClassName"]) not in objects:
            problem(where, f"runtimeClassName {spec['runtimeClassName']!r} is not defined")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            cw = f"container {c['name']}"
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problem(where, f"{cw}: volumeMount {m['name']!r} has no volume")
            for e in c.get("env", []):
                check_env_name(f"{where} {cw}", e["name"], keys)
                ref = (e.get("valueFrom") or {})
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    need("Secret", r["name"], f"{cw} env {e['name']}", r["key"], r.get("optional", False))
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    need("ConfigMap", r["name"], f"{cw} env {e['name']}", r["key"], r.get("optional", False))

    for where, doc in docs:
        if doc["kind"] != "Service" or not doc["spec"].get("selector"):
            continue
        selector = doc["spec"]["selector"]
        matching = [spec for ns, labels, spec in pods
                    if ns == doc["metadata"].get("namespace") and all(labels.get(k) == v for k, v in selector.items())]
        if not matching:
            problem(where, f"Service {doc['metadata']['name']}: selector {selector} selects no pod template")
            continue
        port_names = {p.get("name") for spec in matching for c in spec.get("containers", []) for p in c.get("ports", [])}
        port_numbers = {p["containerPort"] for spec in matching for c in spec.get("containers", []) for p in c.get("ports", [])}
        for p in doc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            if target not in (port_names if isinstance(target, str) else port_numbers):
                problem(where, f"Service {doc['metadata']['name']}: targetPort {target!r} is no container port")


def check_kubernetes(directory, versions):
    if not versions:
        sys.exit("usage: check_deploy.py kubernetes DIR VERSION...")
    docs = load_manifests(directory)
    validate_schemas(docs, versions)
    check_references(docs, config_keys())
    return len(docs)


# --- command lines ------------------------------------------------------------------------

def command_lines(units, directory):
    import shlex

    for path in units:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                m = re.match(r"ExecStart=[-@:+!]*(.*)", line.strip())
                if m:
                    yield f"{path}:{n}", shlex.split(m.group(1))
    for where, doc in load_manifests(directory):
        for _, _, template in pod_templates([(where, doc)]):
            for c in template.get("spec", {}).get("containers", []):
                yield f"{where} container {c['name']}", list(c.get("command", [])) + list(c.get("args", []))


def check_commands(binary, units, directory):
    import subprocess

    count = 0
    for where, argv in command_lines(units, directory):
        count += 1
        if not argv or os.path.basename(argv[0]) != "batchai":
            problem(where, f"does not run batchai: {argv}")
            continue
        run = subprocess.run([binary, *argv[1:], "--help"], capture_output=True, text=True)
        if run.returncode != 0:
            error = (run.stderr or run.stdout).strip().splitlines()
            problem(where, f"`batchai {' '.join(argv[1:])}` is refused by {binary}: {error[0] if error else run.returncode}")
    return count


# --- Prometheus and Grafana ---------------------------------------------------------------

# The metrics the rules and dashboards may query, and nothing else: what /metrics of the server
# (crates/batchai-api/src/metrics.rs) and of the agent (crates/batchai-agent/src/metrics.rs)
# expose, Prometheus' own `up`, and the series of NVIDIA's DCGM exporter that the dashboard's GPU
# panels join with batchai_agent_gpu_job. Name: (type, source). A histogram is queried as
# NAME_bucket, NAME_sum and NAME_count. The server's and agent's names must appear (without
# their namespace, as registered) in their metrics.rs, so that a renamed metric fails here.
KNOWN_METRICS = {
    "batchai_http_request_duration_seconds": ("histogram", "server"),
    "batchai_operations_total": ("counter", "server"),
    "batchai_jobs": ("gauge", "server"),
    "batchai_nodes": ("gauge", "server"),
    "batchai_gpus": ("gauge", "server"),
    "batchai_gpus_allocated": ("gauge", "server"),
    "batchai_scheduling_pass_duration_seconds": ("histogram", "server"),
    "batchai_placements_total": ("counter", "server"),
    "batchai_queue_wait_seconds": ("histogram", "server"),
    "batchai_requeues_total": ("counter", "server"),
    "batchai_pending_jobs": ("gauge", "server"),
    "batchai_job_run_seconds": ("histogram", "server"),
    "batchai_gpu_seconds_total": ("counter", "server"),
    "batchai_db_connections": ("gauge", "server"),
    "batchai_db_connections_max": ("gauge", "server"),
    "batchai_agent_running_jobs": ("gauge", "agent"),
    "batchai_agent_sync_failures_total": ("counter", "agent"),
    "batchai_agent_gpus": ("gauge", "agent"),
    "batchai_agent_process_start_duration_seconds": ("histogram", "agent"),
    "batchai_agent_gpu_job": ("gauge", "agent"),
    "batchai_agent_gpu_utilization_ratio": ("gauge", "agent"),
    "batchai_agent_gpu_memory_used_bytes": ("gauge", "agent"),
    "batchai_agent_gpu_memory_total_bytes": ("gauge", "agent"),
    "up": ("gauge", "prometheus"),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "dcgm"),
    "DCGM_FI_DEV_FB_USED": ("gauge", "dcgm"),
}
METRICS_RS = {
    "server": ("batchai_", os.path.join(ROOT, "crates", "batchai-api", "src", "metrics.rs")),
    "agent": ("batchai_agent_", os.path.join(ROOT, "crates", "batchai-agent", "src", "metrics.rs")),
}
# The scrape jobs the rules and the dashboard select on.
SCRAPE_JOBS = ("batchai-server", "batchai-agent")

PROMQL_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
}
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "days_in_month", "day_of_month", "day_of_week", "day_of_year", "deg",
    "delta", "deriv", "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year", "start", "end",
}
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "inf", "nan",
}
# Grafana's interval variables, and what they become for promtool.
GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
GRAFANA_VARIABLE = re.compile(r"\$([A-Za-z_]\w*)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]")


def known_metric_names():
    """Every series name KNOWN_METRICS allows; problems where metrics.rs lost one."""
    names = set()
    sources = {}
    for name, (kind, source) in KNOWN_METRICS.items():
        if kind == "histogram":
            # Its series; the bare name is none.
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
        if source in METRICS_RS:
            prefix, path = METRICS_RS[source]
            if path not in sources:
                with open(path) as f:
                    sources[path] = f.read()
            if not name.startswith(prefix) or f'"{name[len(prefix):]}"' not in sources[path]:
                problem(f"KNOWN_METRICS of {os.path.relpath(__file__, ROOT)}",
                        f"{name} is not registered in {os.path.relpath(path, ROOT)}")
    return names


def promql_names(expr):
    """(metric names, problems) of a PromQL expression, without a full parser: strings, label
    matchers, ranges and grouping labels are removed; what remains of the identifiers are
    functions (before a parenthesis), aggregations, keywords and metric names. The syntax itself
    is promtool's to check."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"#[^\n]*", "", text)
    troubles = []
    if "__name__" in text:
        troubles.append("selects by __name__, which this check cannot follow")
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r" \1 ", text)
    text = re.sub(r"\boffset\s+-?[\w$]+", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if word.lower() in PROMQL_KEYWORDS or word in PROMQL_AGGREGATIONS:
            continue
        if call:
            if word not in PROMQL_FUNCTIONS:
                troubles.append(f"unknown function {word}()")
            continue
        names.add(word)
    return names, troubles


def check_expr(where, expr, allowed):
    names, troubles = promql_names(expr)
    for t in troubles:
        problem(where, t)
    for name in sorted(names - allowed):
        problem(where, f"queries {name}, which is not a known metric (KNOWN_METRICS of "
                       f"{os.path.relpath(__file__, ROOT)}) nor recorded by the rules")


def load_yaml(path):
    import yaml

    with open(path) as f:
        try:
            return yaml.load(f, Loader=strict_loader())
        except yaml.YAMLError as e:
            problem(path, "not valid YAML: " + " ".join(str(e).split()))
            return None


KUBERNETES_SD_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}
KUBERNETES_SD_KEYS = {
    "role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
    "basic_auth", "authorization", "oauth2", "bearer_token", "bearer_token_file", "tls_config",
    "proxy_url", "no_proxy", "proxy_from_environment", "proxy_connect_header",
    "follow_redirects", "enable_http2",
}


def check_kubernetes_sd(where, blocks):
    if not isinstance(blocks, list):
        problem(where, "kubernetes_sd_configs is not a list")
        return
    for i, sd in enumerate(blocks):
        w = f"{where} kubernetes_sd_configs[{i}]"
        if not isinstance(sd, dict):
            problem(w, "not a mapping")
            continue
        for key in sorted(set(sd) - KUBERNETES_SD_KEYS):
            problem(w, f"unknown field {key!r}")
        if sd.get("role") not in KUBERNETES_SD_ROLES:
            problem(w, f"role {sd.get('role')!r} is not one of {sorted(KUBERNETES_SD_ROLES)}")
        ns = sd.get("namespaces", {})
        if not isinstance(ns, dict) or set(ns) - {"names", "own_namespace"} or not isinstance(ns.get("names", []), list):
            problem(w, "namespaces takes names (a list) and own_namespace")


def check_prometheus(directory, out, without_kubernetes_sd):
    """The rule files' expressions and the configs' scrape jobs; returns the recorded names.
    Writes promtool-ready copies of the configs into OUT when asked to."""
    import yaml

    files = sorted(f for f in os.listdir(directory) if f.endswith((".yml", ".yaml")))
    configs = [f for f in files if f.startswith("prometheus")]
    tests = [f for f in files if f.endswith(("_test.yml", "_test.yaml"))]
    rule_files = [f for f in files if f not in configs and f not in tests]
    if not configs or not rule_files:
        problem(directory, "expected prometheus*.yml configs and rule files")
    recorded, exprs = set(), []
    for name in rule_files:
        path = os.path.join(directory, name)
        doc = load_yaml(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
            problem(path, "not a rule file (groups:)")
            continue
        for group in doc["groups"]:
            for i, rule in enumerate((group or {}).get("rules") or []):
                what = rule.get("alert") or rule.get("record") or f"rule {i}"
                if "record" in rule:
                    recorded.add(rule["record"])
                exprs.append((f"{path} {group.get('name')}/{what}", str(rule.get("expr", ""))))
                # Queries in the annotations' templates: {{ query `...` }} or {{ query "..." }}.
                for text in (rule.get("annotations") or {}).values():
                    for m in re.finditer(r'\bquery\s+(?:`([^`]*)`|"((?:[^"\\]|\\.)*)")', str(text)):
                        exprs.append((f"{path} {group.get('name')}/{what} annotation", m.group(1) or m.group(2)))
    for name in tests:
        path = os.path.join(directory, name)
        doc = load_yaml(path)
        for t, test in enumerate((doc or {}).get("tests") or []):
            for e in test.get("promql_expr_test") or []:
                exprs.append((f"{path} tests[{t}] promql_expr_test", str(e.get("expr", ""))))
    allowed = known_metric_names() | recorded
    for where, expr in exprs:
        check_expr(where, expr, allowed)
    for name in configs:
        path = os.path.join(directory, name)
        doc = load_yaml(path)
        if not isinstance(doc, dict):
            problem(path, "not a Prometheus configuration")
            continue
        jobs = [s.get("job_name") for s in doc.get("scrape_configs") or [] if isinstance(s, dict)]
        for job in SCRAPE_JOBS:
            if job not in jobs:
                problem(path, f"no scrape job {job!r}: the rules and the dashboard select on it")
        if not without_kubernetes_sd:
            continue
        for scrape in doc.get("scrape_configs") or []:
            if isinstance(scrape, dict) and "kubernetes_sd_configs" in scrape:
                check_kubernetes_sd(f"{path} job {scrape.get('job_name')}", scrape.pop("kubernetes_sd_configs"))
                scrape.setdefault("static_configs", [])
        doc["rule_files"] = [f if os.path.isabs(f) else os.path.join(os.path.abspath(directory), f)
                             for f in doc.get("rule_files") or []]
        with open(os.path.join(out, name), "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
    return allowed, len(exprs)


def grafana_substitute(expr, variables):
    """expr with Grafana's variables replaced by what a query would see: durations for the
    interval variables, the `all` value (else .*) for the dashboard's own."""
    def value(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_DURATIONS:
            return GRAFANA_DURATIONS[name]
        return variables.get(name, m.group(0))
    return GRAFANA_VARIABLE.sub(value, expr)


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def check_dashboard(path, allowed, rules):
    """Structure and queries of one dashboard; appends (name, expr) for promtool to RULES and
    returns its expressions as promtool sees them."""
    import json

    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        problem(path, f"not valid JSON: {e}")
        return set()
    if not isinstance(dash, dict):
        problem(path, "not a dashboard (a JSON object)")
        return set()
    for key in ("title", "uid"):
        if not isinstance(dash.get(key), str) or not dash[key]:
            problem(path, f"no {key}")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problem(path, f"schemaVersion {dash.get('schemaVersion')!r}: expected 36 or newer")
    variables = {}
    builtins = set(GRAFANA_DURATIONS) | {"__range_s", "__range_ms", "__interval_ms", "__dashboard", "__from", "__to"}
    templates = (dash.get("templating") or {}).get("list") or []
    ds_vars = [v for v in templates if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if [v.get("name") for v in ds_vars] != ["datasource"]:
        problem(path, "needs one template variable `datasource` of type datasource, query prometheus")
    wanted_ds = {"type": "prometheus", "uid": "${datasource}"}
    for v in templates:
        variables[v.get("name")] = v.get("allValue") or ".*"
    exprs = set()

    def add(where, rule_name, expr, labels):
        if not isinstance(expr, str) or not expr.strip():
            problem(where, "no expression")
            return
        for m in GRAFANA_VARIABLE.finditer(expr):
            name = m.group(1) or m.group(2) or m.group(3)
            if name not in variables and name not in builtins:
                problem(where, f"uses ${name}, which the dashboard does not define")
        promql = grafana_substitute(expr, variables)
        check_expr(where, promql, allowed)
        exprs.add(" ".join(promql.split()))
        rules.append({"record": rule_name, "expr": promql, "labels": labels})

    for v in templates:
        if v.get("type") != "query":
            continue
        where = f"{path} variable {v.get('name')}"
        if v.get("datasource") != wanted_ds:
            problem(where, f"data source {v.get('datasource')!r}: use {wanted_ds}")
        query = v.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*(label_values|query_result)\((.*?)(?:,\s*\w+)?\)\s*", query or "", re.S)
        if m and m.group(2).strip() and not (m.group(1) == "label_values" and re.fullmatch(r"\w+", m.group(2).strip())):
            add(where, f"dashboard:variable_{v.get('name')}", m.group(2), {"variable": str(v.get("name"))})
        elif not m:
            problem(where, f"query {query!r}: expected label_values(...) or query_result(...)")

    ids, boxes = set(), []
    for p in all_panels(dash.get("panels") or []):
        pid = p.get("id")
        where = f"{path} panel {pid} {p.get('title')!r}"
        if not isinstance(pid, int):
            problem(where, "no integer id")
        elif pid in ids:
            problem(where, f"id {pid} is used by another panel")
        ids.add(pid)
        grid = p.get("gridPos") or {}
        if (not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y"))
                or grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24):
            problem(where, f"gridPos {grid} is not on the 24-column grid")
        elif p in (dash.get("panels") or []):
            for other, box in boxes:
                if (grid["x"] < box["x"] + box["w"] and box["x"] < grid["x"] + grid["w"]
                        and grid["y"] < box["y"] + box["h"] and box["y"] < grid["y"] + grid["h"]):
                    problem(where, f"overlaps panel {other}")
            boxes.append((pid, grid))
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            problem(where, "no title")
        if p.get("datasource") != wanted_ds:
            problem(where, f"data source {p.get('datasource')!r}: use {wanted_ds}")
        targets = p.get("targets") or []
        if not targets:
            problem(where, "no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problem(where, f"refIds {refs} are not unique")
        for t in targets:
            tw = f"{where} target {t.get('refId')}"
            if t.get("datasource") != wanted_ds:
                problem(tw, f"data source {t.get('datasource')!r}: use {wanted_ds}")
            add(tw, f"dashboard:panel_{pid}_{t.get('refId')}", t.get("expr"), {"panel": str(p.get("title"))})
    return exprs


def check_grafana(directory, allowed, out):
    import yaml

    rules, exprs = [], set()
    dashboards = sorted(f for f in os.listdir(directory) if f.endswith(".json"))
    if not dashboards:
        problem(directory, "no dashboards")
    for name in dashboards:
        exprs |= check_dashboard(os.path.join(directory, name), allowed, rules)
    with open(os.path.join(out, "dashboard-rules.yml"), "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    tested = 0
    for name in sorted(f for f in os.listdir(directory) if f.endswith((".test.yml", ".test.yaml"))):
        path = os.path.join(directory, name)
        for t, test in enumerate((load_yaml(path) or {}).get("tests") or []):
            for e in test.get("promql_expr_test") or []:
                tested += 1
                expr = str(e.get("expr", ""))
                where = f"{path} tests[{t}]"
                check_expr(where, expr, allowed)
                if " ".join(expr.split()) not in exprs:
                    problem(where, f"tests an expression no dashboard has (stale after a panel changed?): {expr}")
    return len(dashboards), len(rules), tested


def check_monitoring(prometheus_dir, grafana_dir, out, without_kubernetes_sd):
    allowed, n_rules = check_prometheus(prometheus_dir, out, without_kubernetes_sd)
    n_dash, n_exprs, n_tested = check_grafana(grafana_dir, allowed, out)
    return (f"{n_rules} rule and test expressions, {n_dash} dashboard(s) with {n_exprs} queries "
            f"({n_tested} tested), known metrics only")


# --- docker-compose.yml -------------------------------------------------------------------

def check_compose(path, env_example):
    import yaml

    with open(path) as f:
        text = f.read()
    try:
        doc = yaml.load(text, Loader=strict_loader())
    except yaml.YAMLError as e:
        problem(path, f"not valid YAML: {e}")
        return 0
    services = doc.get("services") or {}
    for name in ("postgres", "server", "agent"):
        if name not in services:
            problem(path, f"no service {name!r}")
    keys = config_keys()
    base = os.path.dirname(os.path.abspath(path))
    for name, svc in services.items():
        where = f"{path}: services.{name}"
        if name in ("server", "agent"):
            for var in svc.get("environment") or {}:
                check_env_name(f"{where}.environment", var, keys)
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("./") and not os.path.exists(os.path.join(base, source)):
                problem(f"{where}.volumes", f"{source} does not exist")
        build = svc.get("build")
        if isinstance(build, dict):
            dockerfile = os.path.join(base, build.get("context", "."), build.get("dockerfile", "Dockerfile"))
            if not os.path.exists(dockerfile):
                problem(f"{where}.build", f"{os.path.relpath(dockerfile, base)} does not exist")
            elif build.get("target"):
                with open(dockerfile) as f:
                    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", f.read(), re.M | re.I)
                if build["target"] not in stages:
                    problem(f"{where}.build", f"no stage {build['target']!r} in {os.path.relpath(dockerfile, base)}")
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    with open(env_example) as f:
        described = set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", f.read(), re.M))
    for var in sorted(used - described):
        problem(env_example, f"{var} (read by {os.path.basename(path)}) is not described")
    for var in sorted(described - used):
        problem(env_example, f"{var} is not read by {os.path.basename(path)}")
    return len(services)


def main(argv):
    if len(argv) < 3 or argv[1] not in ("kubernetes", "config", "commands", "monitoring", "compose"):
        sys.exit(__doc__)
    if argv[1] == "compose":
        if len(argv) != 4:
            sys.exit(__doc__)
        n = check_compose(argv[2], argv[3])
        summary = f"{n} compose services (environment, files, build targets, variables)"
    elif argv[1] == "monitoring":
        args = [a for a in argv[2:] if a != "--without-kubernetes-sd"]
        if len(args) != 3:
            sys.exit(__doc__)
        summary = check_monitoring(*args, "--without-kubernetes-sd" in argv)
    elif argv[1] == "commands":
        if len(argv) < 5:
            sys.exit(__doc__)
        n = check_commands(argv[2], argv[3:-1], argv[-1])
        summary = f"{n} command lines against {argv[2]}"
    elif argv[1] == "kubernetes":
        n = check_kubernetes(argv[2], argv[3:])
        summary = f"{n} Kubernetes objects, schemas of Kubernetes {', '.join(argv[3:])} (strict), references"
    else:
        check_config(argv[2:])
        summary = f"{len(argv) - 2} config files against the keys of {os.path.relpath(CONFIG_RS, ROOT)}"
    for p in problems:
        print(p)
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {summary}")
        return 1
    print(f"ok: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
