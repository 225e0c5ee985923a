#!/usr/bin/env bash
# Compiles every CUDA kernel (csrc/ops/**/*.cu) with nvcc against the installed torch's headers,
# for Hopper (sm_90), without linking or running anything: the check that needs no GPU.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_INCLUDE=$("$PYTHON" -c "import torch.utils.cpp_extension as e; print(' '.join('-I'+p for p in e.include_paths()))")
OUT_DIR="$ROOT/build/nvcc-check"
mkdir -p "$OUT_DIR"
status=0
while IFS= read -r -d '' source; do
  object="$OUT_DIR/$(basename "${source%.cu}").o"
  if nvcc -std=c++20 -O1 --expt-relaxed-constexpr -arch=sm_90 -DDEEPREBIRTH_WITH_CUDA \
      -I"$ROOT/csrc" $TORCH_INCLUDE -c "$source" -o "$object"; then
    echo "ok   ${source#$ROOT/}"
  else
    echo "FAIL ${source#$ROOT/}"
    status=1
  fi
done < <(find "$ROOT/csrc" -name '*.cu' -print0 | sort -z)
exit $status
