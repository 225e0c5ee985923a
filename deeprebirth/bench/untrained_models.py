"""Writes a finetune config's teacher and student with random weights (for latency benchmarks).

The files have the architecture a run of the config trains (the job's own ``build_model`` and
``build_student``), so ``scripts/compare_models.py`` measures the same latency as on the trained
files, without training first: float32 latency does not depend on the weights' values. Writes
``teacher.pt``, ``student.pt`` (``deeprebirth.io.save_model``) and ``config.yaml`` to ``--out``.

    python scripts/untrained_models.py configs/fashion_mnist_googlenet.yaml --out /tmp/fm
    python scripts/compare_models.py /tmp/fm/teacher.pt /tmp/fm/student.pt --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deeprebirth import io
from deeprebirth.train.config import config_to_yaml, load_config
from deeprebirth.train.student import build_student, model_from_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="finetune config (YAML)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random weights' seed")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(args.seed)
    teacher = model_from_config(cfg).eval()
    student, _new = build_student(teacher, cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    metadata = {"source": f"untrained, {args.config}", "seed": args.seed}
    for name, model in (("teacher", teacher), ("student", student.eval())):
        path = io.save_model(args.out / f"{name}.pt", model, metadata)
        print(f"{path}: {sum(p.numel() for p in model.parameters()):,} parameters")
    (args.out / "config.yaml").write_text(config_to_yaml(cfg))
    return 0
