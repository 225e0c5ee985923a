#!/usr/bin/env bash
# Runs every test: set-up if needed, then the style checks (scripts/lint.sh), pytest, the Catch2 suite through CTest, and (when nvcc
# is installed) a compile check of the CUDA kernels. Exits non-zero on any failure.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
"$ROOT/scripts/setup.sh" || exit 1

status=0
echo "== lint (ruff, clang-format)"
"$ROOT/scripts/lint.sh" || status=1
echo "== pytest"
"$PYTHON" -m pytest tests/python "$@" || status=1
echo "== Catch2 (ctest)"
ctest --test-dir "$ROOT/build/cmake" --output-on-failure || status=1
if command -v nvcc >/dev/null 2>&1; then
  echo "== CUDA compile check (nvcc, no GPU needed)"
  "$ROOT/scripts/check_cuda_compiles.sh" || status=1
else
  echo "== CUDA compile check skipped: nvcc not found"
fi
exit $status
