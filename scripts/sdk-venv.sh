#!/usr/bin/env bash
# Create (idempotently) the Python venv used by the SDK end-to-end suite (tests/sdk).
#
#   scripts/sdk-venv.sh            # prints the venv path on stdout
#   VENV=$(scripts/sdk-venv.sh) && "$VENV/bin/python" -m pytest tests/sdk -q
#
# The venv lives at ${BATCHAI_VENV:-/var/tmp/batchai-venv}. Requirements are
# re-installed only when tests/sdk/requirements.txt changed (a sha256 stamp is
# kept inside the venv), so a warm run costs well under a second.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$root/tests/sdk/requirements.txt"
venv="${BATCHAI_VENV:-/var/tmp/batchai-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.batchai-requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "sdk-venv: creating $venv with $("$python" --version 2>&1)" >&2
    "$python" -m venv "$venv"
fi

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "sdk-venv: installing $req" >&2
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    "$venv/bin/python" -m pip check >&2
    echo "$want" > "$stamp"
fi

echo "$venv"
