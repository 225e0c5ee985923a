"""``deeprebirth demo``: the short DeepRebirth pipeline on Fashion-MNIST (no downloads).

    deeprebirth demo                                  # the packaged config fashion_mnist_demo
    deeprebirth demo teacher.train.steps=200 data.train_limit=5000

Steps, each printed as it runs:

1. **plan**: the sites ``streamline`` + ``branch_slim`` would change in bvlc_googlenet (width 0.25);
2. **train + slim + layer-wise finetune**: the finetune job (``deeprebirth.train``) trains the
   teacher, slims it and learns the new blocks bottom to top (accuracy after every stage);
3. **deploy**: the exact rules (``fuse_conv_pool``, ``merge_branches``) put deeprebirth's fused
   operators into the student and ``pack_conv`` picks each remaining convolution's CPU kernel;
   ``deeprebirth.verify`` checks they change nothing;
4. **export**: TorchScript (native ops), ONNX and, with ``pip install deeprebirth[deploy]``, an
   ExecuTorch ``.pte`` (XNNPACK, the phone path) of the deployed student, each reloaded and
   compared with eager;
5. **benchmark**: batch-1 latency (interleaved runs) of teacher, student, deployed student and
   the student's ``.pte`` in ExecuTorch.

It ends with one table: accuracy and speed before/after. Output files go to ``output_dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG = "fashion_mnist_demo"  # a packaged config (configs/fashion_mnist_demo.yaml): any folder
DEPLOY_RULES = ("fuse_conv_pool", "merge_branches", "pack_conv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: ``--config FILE|NAME`` (default the demo config), ``--repeats``, ``key=value``
    overrides."""
    parser.add_argument(
        "--config", default=CONFIG, help="finetune YAML config: a file or a packaged config's name"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _show_plan(cfg, example: torch.Tensor) -> Any:
    """Prints and returns the plan of ``cfg.surgery.rules`` on a fresh model."""
    import deeprebirth
    from deeprebirth.train.student import model_from_config

    plan = deeprebirth.plan(model_from_config(cfg).eval(), example, rules=list(cfg.surgery.rules))
    print(plan)
    return plan


def _deploy(student: nn.Module, example: torch.Tensor) -> tuple[nn.Module, Any]:
    """The student with deeprebirth's fused operators (exact), flattened into one graph, and its
    verification against the student."""
    import deeprebirth

    deployed, report = deeprebirth.slim(student.eval(), list(DEPLOY_RULES), example)
    for site in report.applied:
        print(f"{site.rule:<16} {' + '.join(site.modules)}")
    deployed = deeprebirth.surgery.flatten_for_inference(deployed.eval())
    deeprebirth.nn.freeze_packed_weights(deployed)  # its weights stay: packed once
    print(f"{'flatten':<16} one graph of {len(list(deployed.graph.nodes))} nodes")
    return deployed, deeprebirth.verify(student, deployed, example)


def _export(
    model: nn.Module, example: torch.Tensor, out: Path, classes: list[str]
) -> tuple[list[str], Path | None]:
    """Writes TorchScript (native ops), ONNX and, when executorch is installed, ExecuTorch files;
    reloads each and compares with eager. Returns the printed lines and the ``.pte`` path (None
    without executorch)."""
    import importlib.util

    import deeprebirth
    from deeprebirth.export import load_exported

    with torch.inference_mode():
        reference = model(example)
    formats = [("torchscript", "ts"), ("onnx", "onnx")]
    lines, pte = [], None
    if importlib.util.find_spec("executorch") is not None:
        formats.append(("executorch", "pte"))
    else:
        lines.append("executorch   skipped: not installed (pip install deeprebirth[deploy])")
    for fmt, suffix in formats:
        path = deeprebirth.export(
            model,
            example,
            format=fmt,
            out=out / f"student.{suffix}",
            metadata={"class_names": classes, "source_model": "bvlc_googlenet (slim)"},
        )
        diff = (load_exported(path)(example) - reference).abs().max().item()
        lines.append(f"{fmt:<12} {path}  max|logits - eager| = {diff:.2e}")
        pte = path if fmt == "executorch" else pte
    return lines, pte


def _summary(history: list[dict], latency_ms: dict[str, float], plan: Any) -> str:
    """Accuracy, latency and (the plan's) activation memory of teacher and student, one row per
    timed form (``latency_ms`` keys: ``teacher`` first, then the student's forms)."""
    teacher = next(h for h in history if h["label"] == "teacher")
    student = history[-1]
    rows = [f"{'model':<24} {'top-1 %':>8} {'latency ms':>11} {'speed-up':>9} {'act. KiB':>9}"]
    for name, ms in latency_ms.items():
        top1, act = (
            (teacher["top1"], plan.before) if name == "teacher" else (student["top1"], plan.after)
        )
        rows.append(
            f"{name:<24} {top1:>8.2f} {ms:>11.3f} {latency_ms['teacher'] / ms:>8.2f}x "
            f"{act.act_bytes / 1024:>9.1f}"
        )
    rows.append(f"accuracy change: {student['top1'] - teacher['top1']:+.2f} points top-1")
    rows.append("act. KiB: activation memory of one image estimated by the plan")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    """Runs the pipeline; 0 on success, 1 if the exact deployment changed the outputs,
    2 on a configuration or data error."""
    from deeprebirth.bench.timing import interleaved_timings, machine_line
    from deeprebirth.train.config import ConfigError, load_config
    from deeprebirth.train.data import DataError
    from deeprebirth.train.job import run_job

    try:
        cfg = load_config(args.config, list(args.overrides))
    except ConfigError as error:
        print(f"deeprebirth demo: {error}", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    m = cfg.model
    example = torch.randn(1, m.in_channels, m.input_size, m.input_size)
    print(machine_line())
    _banner(f"1/5 plan: {cfg.surgery.rules} on {m.name} width {m.width}, input {m.input_size}")
    plan = _show_plan(cfg, example)
    _banner("2/5 teacher -> slim -> layer-wise finetune (deeprebirth finetune)")
    try:
        result = run_job(cfg)
    except (ConfigError, DataError) as error:
        print(f"deeprebirth demo: {error}", file=sys.stderr)
        return 2
    _banner(f"3/5 deploy: exact rules {list(DEPLOY_RULES)}, then flatten")
    deployed, check = _deploy(result.student.cpu(), example)
    print(check)
    _banner("4/5 export")
    classes = [str(c) for c in range(m.num_classes)]
    lines, pte = _export(deployed, example, result.output_dir, classes)
    print("\n".join(lines))
    threads = torch.get_num_threads()
    _banner(f"5/5 benchmark: batch 1, {threads} threads, {args.repeats} runs")
    models = {"teacher": result.teacher, "student": result.student, "student (deployed)": deployed}
    models = {name: model.cpu().eval() for name, model in models.items()}
    calls = {name: (lambda m=model: m(example)) for name, model in models.items()}
    if pte is not None:
        from deeprebirth.export import load_exported

        run_pte = load_exported(pte, num_threads=threads)  # ExecuTorch's own thread pool
        calls["student (ExecuTorch .pte)"] = lambda: run_pte(example)
    with torch.inference_mode():
        timings = interleaved_timings(calls, repeats=args.repeats)
    latency_ms = {name: timings[name].median for name in calls}
    _banner("summary")
    print(_summary(result.history, latency_ms, plan))
    print(f"report: {result.output_dir / 'report.md'}")
    return 0 if check.ok else 1
