"""Training and evaluation steps, progress bars and metric files of the finetune job.

Losses: :func:`regression_loss` (MSE of student blocks against the teacher's block outputs, each
block fed the teacher's input of that block; :mod:`deeprebirth.train.alignment` says which
outputs) and :func:`task_loss` (cross-entropy, optionally mixed with temperature-scaled KD from
the teacher). :class:`MetricsLogger` appends every record
to ``metrics.jsonl`` and per-kind CSV files, and to TensorBoard when it is installed.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deeprebirth.train.distributed import DistContext, all_reduce_sum


class _StopForward(Exception):
    """Raised by a hook to end a teacher forward once the needed blocks have run."""


@torch.no_grad()
def capture_block_io(
    teacher: nn.Module, x: torch.Tensor, blocks: Iterable[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Runs the (frozen) teacher on ``x`` and returns ``{block: (input, output)}``.

    The forward stops right after the top-most requested block. Tensors are cloned so that
    in-place ops of later layers cannot change them.
    """
    blocks = list(blocks)
    children = dict(teacher.named_children())
    order = [name for name in children if name in blocks]
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module, args, output, name):
        captured[name] = (args[0].detach().clone(), output.detach().clone())
        if name == order[-1]:
            raise _StopForward

    handles = [
        children[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in order
    ]
    try:
        teacher(x)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def regression_loss(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Sum over blocks of the MSE between student and teacher block outputs.

    Raises:
        ValueError: a student block's output shape differs from the teacher's.
    """
    total = 0.0
    for name, out in outputs.items():
        target = targets[name]
        if out.shape != target.shape:
            raise ValueError(
                f"block {name}: student output {tuple(out.shape)} != teacher output {tuple(target.shape)}"
            )
        total = total + F.mse_loss(out.float(), target.float())
    return total


def task_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy, mixed with KD when ``kd_weight > 0``:
    ``(1 - w) * CE + w * T^2 * KL(softmax(t / T) || softmax(s / T))``."""
    ce = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    if teacher_logits is None or kd_weight <= 0:
        return ce
    kd = (
        F.kl_div(
            F.log_softmax(logits.float() / temperature, 1),
            F.log_softmax(teacher_logits.float() / temperature, 1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )
    return (1 - kd_weight) * ce + kd_weight * kd


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, ctx: DistContext, amp: bool = False, channels_last: bool = False
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``, summed
    over ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # correct1, correct5, loss sum, count
    for x, y in loader:
        x, y = x.to(ctx.device), y.to(ctx.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp):
            logits = model(x).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, 1).indices
        hits = top.eq(y[:, None])
        totals += torch.tensor(
            [
                hits[:, 0].sum().item(),
                hits.any(1).sum().item(),
                F.cross_entropy(logits, y, reduction="sum").item(),
                len(y),
            ],
            dtype=torch.float64,
        )
    model.train(was_training)
    c1, c5, loss, n = all_reduce_sum(totals, ctx).tolist()
    n = max(n, 1)
    return {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n}


class MetricsLogger:
    """Appends metric records to ``metrics.jsonl``, ``<kind>.csv`` and TensorBoard (rank 0 only).

    Example:
        >>> log = MetricsLogger("/tmp/run", enabled=True, tensorboard=False)
        >>> log.write("train", phase="regress:conv1", step=1, loss=0.5)
    """

    def __init__(self, output_dir: str | Path, enabled: bool, tensorboard: bool = True) -> None:
        self.dir, self.enabled = Path(output_dir), enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.writer = None

    def write(self, kind: str, **record: Any) -> None:
        """Appends one record of ``kind`` (``train`` or ``eval``)."""
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"kind": kind, **record}) + "\n")
        path = self.dir / f"{kind}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)
        if self.writer is not None:
            step = int(record.get("global_step", record.get("step", 0)))
            for key, value in record.items():
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self.writer.add_scalar(f"{kind}/{record.get('phase', '')}/{key}", value, step)

    def close(self) -> None:
        """Flushes TensorBoard."""
        if self.writer is not None:
            self.writer.close()
