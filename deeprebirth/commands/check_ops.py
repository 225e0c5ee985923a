"""``deeprebirth check-ops``: both operators against ATen on GoogLeNet's real layer shapes.

A quick check that the installed kernels are right and how fast they are here. Builds Caffe's bvlc_googlenet, captures the input of every block it can fuse, and checks both
operators against the unfused ATen sequence on those real layer shapes:
``conv_pool`` on the conv1 (7x7/2 -> ReLU -> max 3/2) and conv2 (3x3 -> ReLU -> max 3/2) chains,
``branch_conv`` on every Inception module's three 1x1 convolutions over the module input.
It prints the maximum difference and the latency of fused vs. unfused for each site.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: input size, batch, width multiplier, threads, timing repetitions."""
    parser.add_argument("--image-size", type=int, default=224, help="input height and width")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--width", type=float, default=1.0, help="GoogLeNet channel multiplier")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant")


def _median_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def _capture_block_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda m, args, name=name: inputs.setdefault(name, args[0])
        )
        for name, module in model.named_children()
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return inputs


def _fusion_sites(model: nn.Module, inputs: dict[str, torch.Tensor]):
    """Yields (site, fused callable, unfused callable) for every fusable block."""
    from deeprebirth import ops

    stem = [("conv1", model.conv1.conv, model.conv1.pool, inputs["conv1"])]
    # conv2's 3x3 reads the output of its 1x1 reducer; its max-pool comes after LRN, so the
    # fusable chain is conv -> ReLU -> pool with LRN dropped (as streamline slimming does).
    reduced = F.relu(model.conv2.reduce(inputs["conv2"]))
    stem.append(("conv2", model.conv2.conv, model.conv2.pool, reduced))
    for name, conv, pool, x in stem:
        fused = ops.ConvPool2d.from_modules(conv, pool, relu=True)
        yield (
            f"{name}: conv {tuple(conv.weight.shape)} + relu + maxpool",
            lambda fused=fused, x=x: fused(x),
            lambda conv=conv, pool=pool, x=x: pool(F.relu(conv(x))),
        )
    for name, module in model.named_children():
        if not hasattr(module, "conv_3x3_reduce"):
            continue
        convs = [module.conv_1x1, module.conv_3x3_reduce, module.conv_5x5_reduce]
        merged = ops.BranchConv2d.from_convs(convs, relu=True)
        x = inputs[name]
        yield (
            f"{name}: 1x1 convs {x.shape[1]}->{[c.out_channels for c in convs]}",
            lambda merged=merged, x=x: merged(x),
            lambda convs=convs, x=x: torch.cat([F.relu(c(x)) for c in convs], 1),
        )


def run(args: argparse.Namespace) -> int:
    """Runs the check; returns 0 when every site matches its reference, 1 otherwise."""
    import deeprebirth

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = deeprebirth.build_info()
    print("deeprebirth", info["version"], "| torch", info["torch_runtime_version"], "|",
          info["parallel_backend"], f"{info['num_threads']} threads | CUDA kernels:",
          info["with_cuda"])  # fmt: skip
    model = deeprebirth.models.bvlc_googlenet(width=args.width).eval()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    inputs = _capture_block_inputs(model, x)
    print(f"bvlc_googlenet width {args.width}, input {tuple(x.shape)}\n")
    header = f"{'site':<58} {'max|diff|':>10} {'fused ms':>9} {'unfused ms':>10} {'ratio':>6}"
    print(header + "\n" + "-" * len(header))
    all_match = True
    with torch.no_grad():
        for site, fused, unfused in _fusion_sites(model, inputs):
            out, ref = fused(), unfused()
            diff = (out - ref).abs().max().item()
            match = torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
            all_match &= match
            t_fused = _median_ms(fused, args.repeats)
            t_unfused = _median_ms(unfused, args.repeats)
            flag = "" if match else "  MISMATCH"
            print(f"{site:<58} {diff:>10.2e} {t_fused:>9.2f} {t_unfused:>10.2f} "
                  f"{t_unfused / t_fused:>5.2f}x{flag}")  # fmt: skip
    print("\nall operators match their ATen references" if all_match else "\nMISMATCH found")
    return 0 if all_match else 1
