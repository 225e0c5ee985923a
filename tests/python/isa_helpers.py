"""Running checks with each CPU instruction set deeprebirth's kernels are compiled for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_with_cpu_isa(isa: str, code: str) -> None:
    """Runs ``code`` in a fresh Python whose per-ISA kernels are forced to ``isa`` by
    ``DEEPREBIRTH_CPU_ISA`` (the choice is made once per process), with this folder importable.
    Fails when it exits non-zero; skips when the CPU does not run ``isa``."""
    prelude = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import deeprebirth.ops; print(deeprebirth.ops.direct_conv_isa(), flush=True); "
    )
    env = dict(os.environ, DEEPREBIRTH_CPU_ISA=isa)
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = done.stdout.split()[0]
    if ran != isa:
        pytest.skip(f"this CPU does not run the {isa} kernels (it ran {ran})")
