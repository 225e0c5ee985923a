#!/usr/bin/env bash
# The style checks every change passes (also run by scripts/test.sh and .pre-commit-config.yaml):
# ruff lint, ruff format and clang-format in check mode over the tracked sources. Exits non-zero
# on a violation; `scripts/lint.sh --fix` rewrites the files instead.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
mapfile -t cxx < <(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'tests/cpp/*.cpp' 'tests/cpp/*.h')
status=0
if [ "${1:-}" = "--fix" ]; then
  "$PYTHON" -m ruff check --fix . && "$PYTHON" -m ruff format . && clang-format -i "${cxx[@]}"
  exit $?
fi
"$PYTHON" -m ruff check --quiet . || status=1
"$PYTHON" -m ruff format --check --quiet . || status=1
clang-format --dry-run -Werror "${cxx[@]}" || status=1
if [ $status -ne 0 ]; then
  echo "[lint] style violations above; scripts/lint.sh --fix rewrites the files" >&2
fi
exit $status
