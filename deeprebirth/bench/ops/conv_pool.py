"""Benchmark: fused ``deeprebirth::conv_pool`` vs. the unfused F.conv2d -> F.relu -> F.max_pool2d.

Not a test. For GoogLeNet conv1 / conv2 and the ResNet-50 stem at batch 1 and 32, prints the
latency of each variant from interleaved runs in one process (median [min, max] in ms), the
unfused/fused ratio per layout (contiguous, channels_last) and against the unfused sequence in its
best layout, the bound (best unfused / the convolution alone, timed in the same run: what making
ReLU and pooling free would gain; only at large batches, where writing the pre-pool tensor costs
the convolution itself, can fusion gain more; GoogLeNet conv2, a 3x3 stride-1 layer, convolves
by the Winograd algorithm inside the fused op, with 2.25x fewer multiply-adds, so it can pass the
bound at any batch; conv1 and the stem convolve with the library's direct kernel, about as fast as
oneDNN's on two threads), and the peak extra resident memory of each (VmHWM, lowest of 5
calls, see deeprebirth.bench.timing.peak_extra_rss_bytes), then the machine line.

    python scripts/bench_conv_pool.py            # full grid
    python scripts/bench_conv_pool.py --quick    # batch 1 only, fewer repeats
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deeprebirth.bench.compare_models import int_list
from deeprebirth.bench.timing import (
    interleaved_timings,
    machine_line,
    peak_extra_rss_bytes,
)
from deeprebirth.ops import conv_pool

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass(frozen=True)
class Layer:
    """One conv -> ReLU -> max-pool block: input (C, H, W), conv and pool settings."""

    name: str
    in_shape: tuple[int, int, int]
    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool_kernel: int
    pool_stride: int
    pool_padding: int
    ceil_mode: bool


LAYERS = (
    Layer("googlenet.conv1", (3, 224, 224), 64, 7, 2, 3, 3, 2, 0, True),
    Layer("googlenet.conv2", (64, 56, 56), 192, 3, 1, 1, 3, 2, 0, True),
    Layer("resnet50.stem", (3, 224, 224), 64, 7, 2, 3, 3, 2, 1, False),
)


def make_variants(
    layer: Layer, batch: int, layout: torch.memory_format
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """(fused, unfused, convolution alone) closures over random inputs of ``layer`` in
    ``layout``."""
    x = torch.randn(batch, *layer.in_shape).contiguous(memory_format=layout)
    fan_in = layer.in_shape[0] * layer.kernel**2
    w = torch.randn(layer.out_channels, layer.in_shape[0], layer.kernel, layer.kernel)
    w = (w / math.sqrt(fan_in)).contiguous(memory_format=layout)
    b = torch.randn(layer.out_channels)

    def fused() -> torch.Tensor:
        return conv_pool(
            x, w, b, layer.stride, layer.padding, pool="max", pool_kernel=layer.pool_kernel,
            pool_stride=layer.pool_stride, pool_padding=layer.pool_padding,
            ceil_mode=layer.ceil_mode, relu=True,
        )  # fmt: skip

    def unfused() -> torch.Tensor:
        y = F.relu(F.conv2d(x, w, b, layer.stride, layer.padding))
        return F.max_pool2d(
            y, layer.pool_kernel, layer.pool_stride, layer.pool_padding, 1, layer.ceil_mode
        )

    def convolution() -> torch.Tensor:
        return F.conv2d(x, w, b, layer.stride, layer.padding)

    torch.testing.assert_close(fused(), unfused(), rtol=1e-4, atol=1e-4)
    return fused, unfused, convolution


def run(layers: Sequence[Layer], batches: Sequence[int], repeats: int) -> list[dict]:
    """Measures every (layer, batch, layout); returns one row per (layer, batch)."""
    rows = []
    for layer in layers:
        for batch in batches:
            variants, memory = {}, {}
            for layout_name, layout in LAYOUTS.items():
                fused, unfused, convolution = make_variants(layer, batch, layout)
                variants[f"fused/{layout_name}"] = fused
                variants[f"unfused/{layout_name}"] = unfused
                variants[f"conv/{layout_name}"] = convolution
            for name, fn in variants.items():
                if not name.startswith("conv/"):
                    memory[name] = peak_extra_rss_bytes(fn, repeats=5)
            timings = interleaved_timings(variants, repeats=repeats, warmup=3)
            rows.append({"layer": layer.name, "batch": batch, "t": timings, "mem": memory})
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The results as a fixed-width text table."""
    header = (
        f"{'layer':<16} {'N':>3} {'layout':<13} {'fused ms':>24} {'unfused ms':>24} "
        f"{'ratio':>6} {'vs best':>7} {'bound':>6} {'fused MiB':>9} {'unfused MiB':>11} "
        f"{'mem %':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        t, mem = row["t"], row["mem"]
        best_unfused = min(t[f"unfused/{name}"].median for name in LAYOUTS)
        bound = best_unfused / min(t[f"conv/{name}"].median for name in LAYOUTS)
        for name in LAYOUTS:
            f, u = t[f"fused/{name}"], t[f"unfused/{name}"]
            fm, um = mem[f"fused/{name}"], mem[f"unfused/{name}"]
            lines.append(
                f"{row['layer']:<16} {row['batch']:>3} {name:<13} {f!s:>24} {u!s:>24} "
                f"{u.median / f.median:>6.2f} {best_unfused / f.median:>7.2f} {bound:>6.2f} "
                f"{fm / 2**20:>9.2f} {um / 2**20:>11.2f} {100 * fm / max(um, 1):>5.0f}%"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints the table and the machine line; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 10 repeats")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--batches", type=int_list, default=[1, 32], help="e.g. 1,8 (default 1,32)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches, repeats = ([1], 10) if args.quick else (args.batches, args.repeats)
    rows = run(LAYERS, batches, repeats)
    print(format_table(rows))
    print(
        "ratio = unfused / fused median in the same layout; vs best = best-layout unfused / fused; "
        "bound = best-layout unfused / best-layout F.conv2d alone (what free ReLU + pooling "
        "would gain with the same convolution arithmetic; googlenet.conv2 is fused with Winograd "
        "F(2x2, 3x3), 2.25x fewer multiply-adds; conv1 and the stem with the direct kernel); "
        "memory = peak extra RSS (VmHWM) of one call, lowest of 5, inputs excluded"
    )
    print(machine_line())
    return 0
