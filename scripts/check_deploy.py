"""Offline checks of the deployment files, run by scripts/check-deploy.sh in its venv.

  python scripts/check_deploy.py kubernetes DIR VERSION...   the manifests in DIR
  python scripts/check_deploy.py config FILE...              TOML configs and env files
  python scripts/check_deploy.py commands BIN UNIT... DIR    command lines, against a binary

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


def main(argv):
    if len(argv) < 3 or argv[1] not in ("kubernetes", "config", "commands"):
        sys.exit(__doc__)
    if argv[1] == "commands":
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
