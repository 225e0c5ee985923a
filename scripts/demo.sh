#!/usr/bin/env bash
# The main job on built-in data: set-up if needed, then `deeprebirth demo` (no data or weights to
# fetch). Extra arguments go to `deeprebirth demo`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$PYTHON" -m deeprebirth.cli demo "$@"
