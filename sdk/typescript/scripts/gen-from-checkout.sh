#!/usr/bin/env bash
# Regenerate src/generated/openapi.ts from the server code of this checkout, no server
# running: the document create_app() builds is the one a live server serves at /openapi.json.
# Usage: gen-from-checkout.sh PYTHON (the virtualenv's python, with stockade installed).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
spec="$(mktemp)"
trap 'rm -f "$spec"' EXIT
"$1" - > "$spec" <<'PY'
import json, pathlib, sys, tempfile
from stockade.server.app import create_app
from stockade.server.config import ServerConfig
with tempfile.TemporaryDirectory() as d:
    json.dump(create_app(ServerConfig(data_dir=pathlib.Path(d), cache_dir=pathlib.Path(d))).openapi(), sys.stdout)
PY
cd "$here"
[ -d node_modules ] || npm ci --prefer-offline
node scripts/gen-openapi.mjs "$spec"
