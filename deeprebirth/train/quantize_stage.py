"""The finetune job's last stage: int8 quantization of the finished student (and, for
comparison, of the teacher), calibrated on training images (:mod:`deeprebirth.quantize`).

Config keys (``quantize:``): ``enabled``, ``backend`` (``xnnpack``: ``student_int8.pte`` for
ExecuTorch; ``x86_inductor``: ``student_int8.pt2`` for ``torch.compile``), ``calibration_images``
(the first N training images, in the training transform), ``per_channel``, ``qat_steps`` /
``qat_lr`` (quantization-aware steps that distil the float model) and ``teacher`` (quantize the
teacher too). Each quantized model is evaluated on the validation set like every other stage (its
reference graph: float arithmetic on int8-rounded values, what the int8 kernels compute up to
rounding) and adds a row to the history and ``report.md``.

Example:
    >>> cfg = load_config("configs/synthetic_smoke.yaml", ["quantize.enabled=true"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

QUANTIZE_FILES = tuple(
    f"{who}_int8{suffix}" for who in ("student", "teacher") for suffix in (".pte", ".pt2")
)


@dataclass
class QuantizeConfig:
    """Stage after the layer-wise finetune: int8 quantization (PT2E) of the student."""

    enabled: bool = False
    backend: str = "xnnpack"  # xnnpack (.pte, ExecuTorch) | x86_inductor (.pt2, torch.compile)
    calibration_images: int = 256  # the first N training images
    per_channel: bool = True  # weight scales per output channel (x86_inductor: always)
    qat_steps: int = 0  # quantization-aware steps after calibration (0: post-training only)
    qat_lr: float = 1e-4
    teacher: bool = False  # also quantize the teacher, for comparison


def check_quantize_config(cfg) -> None:
    """Checks ``cfg.quantize`` before any work (also when disabled: a typo shows early).

    Raises:
        ConfigError: an unknown backend, per-tensor weights for ``x86_inductor``, a value out
            of range, or (when enabled) a backend whose packages are not installed.
    """
    from deeprebirth.quantize.backends import BACKEND_PACKAGES, BACKENDS
    from deeprebirth.train.config import ConfigError

    q = cfg.quantize
    if q.backend not in BACKENDS:
        raise ConfigError(
            f"config key 'quantize.backend' expects one of {BACKENDS}, but got {q.backend!r}"
        )
    if q.backend == "x86_inductor" and not q.per_channel:
        raise ConfigError(
            "config key 'quantize.per_channel' is false, but backend x86_inductor quantizes "
            "weights per channel only"
        )
    if q.calibration_images < 1 or q.qat_steps < 0 or not q.qat_lr > 0:
        raise ConfigError(
            "config keys 'quantize.calibration_images' >= 1, 'quantize.qat_steps' >= 0 and "
            f"'quantize.qat_lr' > 0 expected, but got {q.calibration_images}, {q.qat_steps} "
            f"and {q.qat_lr}"
        )
    missing = [p for p in BACKEND_PACKAGES[q.backend] if importlib.util.find_spec(p) is None]
    if q.enabled and missing:
        raise ConfigError(
            f"config key 'quantize.backend' is {q.backend!r}, which needs {', '.join(missing)}: "
            "pip install deeprebirth[deploy]"
        )


def _calibration_images(dataset, count: int, batch_size: int):
    """The first ``count`` images of ``dataset``, in batches (labels dropped)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    taken = 0
    for images, _ in loader:
        yield images[: count - taken]
        taken += len(images)
        if taken >= count:
            return


def run_quantize_stage(
    cfg,
    models: dict[str, tuple[nn.Module, dict[str, Any]]],
    data,
    output_dir: Path,
    log=None,
) -> list[dict[str, Any]]:
    """Quantizes the student of ``models`` (and the teacher when ``quantize.teacher``), writes
    ``<name>_int8.pte`` / ``.pt2`` to ``output_dir`` and evaluates it on ``data.val``; returns the
    history records (the job's ``_evaluate`` columns).

    Args:
        cfg: the job's config (``cfg.quantize``, ``cfg.model``, ``cfg.batch_size``).
        models: ``{"student": (model, metadata), "teacher": (model, metadata)}``: float models on
            the CPU (not changed) and the metadata of their model files (``source``, ``classes``,
            ``mean`` …) for the exports.
        data: the job's :class:`~deeprebirth.train.data.Datasets`.
        log: the job's :class:`~deeprebirth.train.loop.MetricsLogger` (records ``eval`` rows).
    """
    from tqdm import tqdm

    from deeprebirth.quantize import quantize_model, save_quantized
    from deeprebirth.quantize.save import SUFFIX
    from deeprebirth.train.distributed import DistContext
    from deeprebirth.train.loop import evaluate

    q = cfg.quantize
    names = ["student", "teacher"] if q.teacher else ["student"]
    batch = cfg.eval_batch_size or cfg.batch_size
    val_loader = DataLoader(data.val, batch_size=batch, shuffle=False)
    cpu = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    shape = (1, cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    records = []
    for name in names:
        model, metadata = models[name]
        quantized = quantize_model(
            model,
            _calibration_images(data.train, q.calibration_images, cfg.batch_size),
            q.backend,
            per_channel=q.per_channel,
            qat_steps=q.qat_steps,
            qat_lr=q.qat_lr,
            batch_size=cfg.batch_size,
            example_input=torch.zeros(shape),
        )
        fields = {k: v for k, v in metadata.items() if k != "input_size"}
        path = Path(output_dir) / f"{name}_int8{SUFFIX[q.backend]}"
        saved = save_quantized(quantized, path, fields)
        metrics = evaluate(quantized.module, val_loader, cpu)
        share = quantized.share
        record = {
            "label": f"{name} int8 ({q.backend}, {share.int8_layers}/{share.layers} layers int8)",
            "stage": 0,
            "blocks": "",
            **metrics,
            "train_s": None,
            "ms_per_step": None,
        }
        records.append(record)
        if log is not None:
            log.write("eval", **record)
        tqdm.write(
            f"[eval] {record['label']:<32} top-1 {metrics['top1']:6.2f}%  top-5 "
            f"{metrics['top5']:6.2f}%  ({saved.path.name})"
        )
    return records
