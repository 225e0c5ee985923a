#!/usr/bin/env bash
# Installs what is missing, and nothing else, then builds deeprebirth:
#   1. Debian packages (build tools, clang-format, Catch2, OpenCV, cxxopts + nlohmann-json for the C++ runner,
#      the Fashion-MNIST data set);
#   2. pinned Python packages (torch==2.13.0 CPU wheel, torchvision==0.28.0, requirements.txt,
#      requirements-deploy.txt and requirements-timm.txt with --no-deps);
#   3. the Python extension deeprebirth._C (pip install --no-build-isolation -e .), only when its
#      sources changed or the installed package points at another checkout;
#   4. the CMake targets (libdeeprebirth_ops.so, the Catch2 tests) in build/cmake, incrementally.
# A second run on a ready machine does no installs and finishes in seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0   # the torchvision release built for torch 2.13
APT_PACKAGES=(build-essential cmake ninja-build clang-format catch2 libopencv-dev libcxxopts-dev nlohmann-json3-dev
  dataset-fashion-mnist)
STAMP_DIR="$ROOT/.cache/setup"
mkdir -p "$STAMP_DIR"
log() { echo "[setup] $*"; }
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

# ---- 1. Debian packages ----
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- 2. Python packages ----
# Prints the requirements of the file $1 (plus the ones given after it) that are not satisfied.
unsatisfied() {
  "$PYTHON" - "$@" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
lines = [l.split("#")[0].strip() for l in open(sys.argv[1])] + sys.argv[2:]
for line in filter(None, lines):
    req = Requirement(line)
    try:
        installed = version(req.name).split("+")[0]
    except PackageNotFoundError:
        print(line); continue
    if installed not in req.specifier:
        print(line)
PY
}
if ! "$PYTHON" -c "import packaging" 2>/dev/null; then pip_install packaging; fi
todo=$(unsatisfied "$ROOT/requirements.txt" "torchvision==$TORCHVISION_VERSION")
if [ -n "$todo" ]; then
  log "installing Python packages: $(echo $todo | tr '\n' ' ')"
  # torch first, pinned: the CPU wheel on disk; an unpinned torch would pull CUDA wheels.
  pip_install "torch==$TORCH_VERSION"
  pip_install -r "$ROOT/requirements.txt"
  # --no-deps: torchvision must never change the installed torch.
  pip_install --no-deps "torchvision==$TORCHVISION_VERSION"
fi
# Deployment runtimes (ExecuTorch + XNNPACK, OpenVINO; the `deploy` extra). requirements-deploy.txt
# is the complete list, installed with --no-deps: executorch and torchao declare torch.
todo=$(unsatisfied "$ROOT/requirements-deploy.txt")
if [ -n "$todo" ]; then
  log "installing deployment runtimes: $(echo $todo | tr '\n' ' ')"
  pip_install --no-deps $todo
fi
# timm models (the `timm` extra): --no-deps, timm declares torch and torchvision.
todo=$(unsatisfied "$ROOT/requirements-timm.txt")
if [ -n "$todo" ]; then
  log "installing timm: $(echo $todo | tr '\n' ' ')"
  pip_install --no-deps $todo
fi

# ---- 3. the Python extension ----
sources_hash() {
  (cd "$ROOT" && find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
     | sort -z | xargs -0 sha1sum; sha1sum setup.py pyproject.toml deeprebirth/_version.py;
   "$PYTHON" -c "import torch; print(torch.__version__)";
   "$PYTHON" -m pip list --disable-pip-version-check 2>/dev/null | grep -i '^onednn' || true) | sha1sum | cut -d' ' -f1
}
installed_from() {  # the checkout the importable deeprebirth package comes from
  (cd / && "$PYTHON" -c "import deeprebirth, pathlib; print(pathlib.Path(deeprebirth.__file__).resolve().parent.parent)" 2>/dev/null) || true
}
want=$(sources_hash)
have=$(cat "$STAMP_DIR/extension.sha1" 2>/dev/null || true)
if [ "$want" != "$have" ] || [ "$(installed_from)" != "$ROOT" ]; then
  log "building the Python extension (pip install --no-build-isolation -e .)"
  "$PYTHON" -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e "$ROOT"
  if [ "$(installed_from)" != "$ROOT" ]; then
    echo "[setup] error: after installing, deeprebirth still imports from '$(installed_from)'" >&2
    exit 1
  fi
  echo "$want" >"$STAMP_DIR/extension.sha1"
fi

# ---- 4. CMake targets ----
BUILD_DIR="$ROOT/build/cmake"
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  log "configuring CMake in build/cmake"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython3_EXECUTABLE="$(command -v "$PYTHON")" >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" | { grep -vE '^\[[0-9]+/[0-9]+\]|^ninja: no work to do' || true; }
log "ready"
