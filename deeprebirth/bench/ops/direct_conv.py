"""Benchmark: deeprebirth::direct_conv vs. conv2d and ATen's im2col kernel, per layer (not a test).

Layers: every convolution of the Fashion-MNIST GoogLeNet teacher of a finetune config and of the
student its surgery rules make (random weights; the shapes are what matter), at batch 1 by
default. Each layer runs ``F.conv2d -> relu_``, ATen's im2col + GEMM kernel
(``thnn_conv2d -> relu_``) and ``direct_conv`` (ReLU fused, weight packed beforehand), interleaved
in one process; "vs best" is the faster ATen median over direct_conv's (> 1: direct_conv is
faster). The last rows sum each model's layers, and "small_conv2d" is what PackedConv2d runs (the
direct kernel where it pays, conv2d otherwise; its sum counts each layer's chosen side).

    python scripts/bench_direct_conv.py [--config configs/fashion_mnist_googlenet.yaml]
        [--batch 1] [--threads N] [--repeats 15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deeprebirth.bench.timing import interleaved_timings, machine_line
from deeprebirth.ops import (
    direct_conv,
    direct_conv_isa,
    direct_conv_pack,
    small_conv2d,
)
from deeprebirth.surgery.modules import PackedConv2d
from deeprebirth.train import config as job_config
from deeprebirth.train.student import build_student, model_from_config

ROOT = Path(__file__).resolve().parents[3]  # the repository (deeprebirth/bench/ops/<this>)


def conv_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Tensor]]:
    """Each convolution of ``model`` with the input it gets in a forward pass on ``x``."""
    calls: list[tuple[nn.Conv2d, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda m, inputs, _: calls.append((m, inputs[0].clone())))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return calls


def layer_row(conv: nn.Conv2d, x: torch.Tensor, repeats: int) -> tuple[str, dict[str, float]]:
    """A table row for one layer and its medians (ms) per kernel."""
    w, b = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
    stride, padding, kernel = list(conv.stride), list(conv.padding), list(conv.kernel_size)
    packed = direct_conv_pack(w)
    variants = {
        "conv2d": lambda: F.conv2d(x, w, b, stride, padding).relu_(),
        "im2col": lambda: torch._C._nn.thnn_conv2d(x, w, kernel, b, stride, padding).relu_(),
        "direct": lambda: direct_conv(x, packed, b, w.shape[0], stride, padding, relu=True),
        "small_conv2d": lambda: small_conv2d(
            x,
            w,
            packed,
            b,
            stride,
            padding,
            relu=True,
            max_macs=PackedConv2d.min_packed_macs,
            max_1x1_pixels=PackedConv2d.max_direct_1x1_pixels,
        ),  # fmt: skip
    }
    with torch.inference_mode():
        medians = {k: t.median for k, t in interleaved_timings(variants, repeats).items()}
    best_aten = min(medians["conv2d"], medians["im2col"])
    shape = f"{tuple(x.shape[1:])} -> {w.shape[0]} {kernel[0]}x{kernel[1]}/{stride[0]}"
    macs = conv.weight.numel() * x.shape[0] * _out_pixels(conv, x)
    row = (
        f"| {shape} | {macs / 1e6:.2f} | {medians['conv2d'] * 1e3:.1f} | "
        f"{medians['im2col'] * 1e3:.1f} | {medians['direct'] * 1e3:.1f} | "
        f"{best_aten / medians['direct']:.2f}x | {medians['small_conv2d'] * 1e3:.1f} |"
    )
    return row, medians


def _out_pixels(conv: nn.Conv2d, x: torch.Tensor) -> int:
    size = [
        (x.shape[2 + d] + 2 * conv.padding[d] - conv.kernel_size[d]) // conv.stride[d] + 1
        for d in range(2)
    ]
    return size[0] * size[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/fashion_mnist_googlenet.yaml"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = job_config.load_config(args.config)
    teacher = model_from_config(cfg).eval()
    student, _ = build_student(teacher, cfg)
    size = cfg.model.input_size
    x = torch.randn(args.batch, cfg.model.in_channels, size, size)
    print(machine_line())
    print(
        f"batch {args.batch}, medians in microseconds (relu included); direct kernel: "
        f"{direct_conv_isa()}\n"
    )
    print(
        "| layer (C, H, W -> C_out k/s) | MMACs | conv2d | im2col | direct | vs best | small_conv2d |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, model in (("teacher", teacher), ("student", student.eval())):
        totals = dict.fromkeys(("conv2d", "im2col", "direct", "small_conv2d"), 0.0)
        for conv, layer_input in conv_calls(model, x):
            row, medians = layer_row(conv, layer_input, args.repeats)
            print(row)
            for key in totals:
                totals[key] += medians[key]
        best_aten = min(totals["conv2d"], totals["im2col"])
        print(
            f"| **{name}: all layers** | | {totals['conv2d'] * 1e3:.0f} | "
            f"{totals['im2col'] * 1e3:.0f} | {totals['direct'] * 1e3:.0f} | "
            f"{best_aten / totals['direct']:.2f}x | {totals['small_conv2d'] * 1e3:.0f} |"
        )
    return 0
