"""The documented install into an existing PyTorch environment (README, "Install into an existing
environment"), end to end: a fresh virtual environment that sees the installed torch
(``--system-site-packages``), ``pip install --no-build-isolation .`` from the checkout, then, from
a folder outside the repository, ``deeprebirth finetune --config synthetic_smoke`` and a C++
project (tests/cpp/consumer) that finds the installed package with ``find_package(deeprebirth)``.

The install reuses the objects of the development install (setup.py keeps them in
build/temp.<platform>), so after scripts/setup.sh it only links; in a checkout without them it
compiles the extension first (minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Runs ``command`` outside the repository's import path; fails the test with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited with {result.returncode}\n"
            f"--- stdout (end)\n{result.stdout[-4000:]}\n--- stderr (end)\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment with deeprebirth installed as the README says: the documented
    command plus ``--no-index``, so pip can download nothing (no torch either) and must find
    every requirement already installed."""
    folder = tmp_path_factory.mktemp("install") / "venv"
    start = time.perf_counter()
    _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)],
        ROOT,
        120,
    )
    python = str(folder / "bin" / "python")
    _run([python, "-m", "pip", "install", "--no-build-isolation", "--no-index", "."], ROOT, 1200)
    print(f"venv + install: {time.perf_counter() - start:.1f} s")
    return folder


def _venv_python(venv: Path, code: str, cwd: Path) -> str:
    return _run([str(venv / "bin" / "python"), "-c", code], cwd, 120).stdout


def test_install_keeps_torch_and_ships_package_files(venv, tmp_path):
    """The venv imports the installed copy (not the checkout) with the torch that was already
    installed, and the package carries configs, headers, library, CMake files and LICENSE."""
    code = (
        "import json, torch, deeprebirth; print(json.dumps({'deeprebirth': deeprebirth.__file__, "
        "'torch': torch.__file__, 'torch_version': torch.__version__, "
        "'info': deeprebirth.build_info(), 'prefix': deeprebirth.cmake_prefix_path()}))"
    )
    facts = json.loads(_venv_python(venv, code, tmp_path))
    package = Path(facts["deeprebirth"]).parent
    assert package.is_relative_to(venv), f"imported {package}, not the venv's copy"
    assert facts["torch"] == torch.__file__ and facts["torch_version"] == torch.__version__
    assert facts["info"]["torch_version"] == torch.__version__.split("+")[0]

    configs = sorted(p.name for p in (package / "configs").glob("*.yaml"))
    assert configs == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    headers = {p.relative_to(ROOT / "csrc") for p in (ROOT / "csrc" / "ops").rglob("*.h")}
    shipped = package / "include" / "deeprebirth"
    assert (
        all((shipped / h).is_file() for h in headers) and (shipped / "deeprebirth_ops.h").is_file()
    )
    assert (package / "lib" / "libdeeprebirth_ops.so").is_file()
    assert Path(facts["prefix"], "deeprebirth", "deeprebirthConfig.cmake").is_file()

    (dist_info,) = package.parent.glob("deeprebirth-*.dist-info")
    assert (dist_info / "licenses" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    metadata = (dist_info / "METADATA").read_text()
    major_minor = ".".join(torch.__version__.split(".")[:2])
    assert f"Requires-Dist: torch=={major_minor}.*" in metadata
    for extra in ("deploy", "tensorboard"):
        assert f"Provides-Extra: {extra}" in metadata


def test_finetune_runs_a_packaged_config_outside_the_repository(venv, tmp_path):
    """``--config synthetic_smoke`` is the packaged copy of configs/synthetic_smoke.yaml. Shorter
    here (the install is under test, not the training): fewer steps, no latency runs, and plain
    ATen convolutions (oneDNN would compile kernels for every new shape of the tiny model)."""
    out = tmp_path / "run"
    shorter = ["teacher.train.steps=2", "schedule.regression_steps=1", "schedule.finetune_steps=1"]
    shorter += ["latency_repeats=0", "onednn=false"]
    command = [str(venv / "bin" / "deeprebirth"), "finetune", "--config", "synthetic_smoke"]
    start = time.perf_counter()
    _run([*command, f"output_dir={out}", *shorter], tmp_path, 600)
    print(f"finetune: {time.perf_counter() - start:.1f} s")
    assert (out / "student.pt").is_file() and (out / "report.md").is_file()
    ran = OmegaConf.load(out / "config.yaml")
    source = OmegaConf.load(ROOT / "configs" / "synthetic_smoke.yaml")
    for section in ("model", "data", "surgery", "optimizer"):  # every key of the file applied
        assert ran[section] == OmegaConf.merge(ran[section], source[section]), section
    assert ran.output_dir == str(out)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_project_finds_the_installed_package(venv, tmp_path):
    """tests/cpp/consumer builds against the venv's package with CMAKE_PREFIX_PATH set to
    ``deeprebirth.cmake_prefix_path()`` alone and runs conv_pool against ATen."""
    prefix = _venv_python(
        venv, "import deeprebirth; print(deeprebirth.cmake_prefix_path())", tmp_path
    )
    build = tmp_path / "consumer"
    start = time.perf_counter()
    configure = ["cmake", "-S", str(ROOT / "tests" / "cpp" / "consumer"), "-B", str(build)]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    _run(
        [*configure, "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_PREFIX_PATH={prefix.strip()}"],
        tmp_path,
        300,
    )
    _run(["cmake", "--build", str(build)], tmp_path, 600)
    result = _run([str(build / "deeprebirth_consumer")], tmp_path, 120)
    print(f"consumer: {time.perf_counter() - start:.1f} s")
    assert "deeprebirth::conv_pool matches ATen" in result.stdout


def test_build_without_torch_names_no_build_isolation():
    """An isolated build (plain ``pip install .``) has no torch: setup.py says what to run."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; "
        "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "pip install --no-build-isolation ." in result.stderr
    assert "Traceback" not in result.stderr
