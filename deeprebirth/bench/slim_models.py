"""Model-level latency and peak activation memory of slimmed vs original models (not a test).

Scenarios (each at batch 1 and 8, ``--threads`` threads, variants interleaved in one process):

1. bvlc_googlenet eager vs fully slimmed (streamline + branch_slim + fold_bn + fuse_conv_pool +
   merge_branches). Paper targets: >= 3x lower latency, >= 2.5x lower peak activation memory.
2. torchvision resnet50 eager vs fold_bn + fuse_conv_pool + streamline (stem). Target >= 1.3x.
3. torchvision googlenet exact rules only (fold_bn + fuse_conv_pool + merge_branches) vs
   ``torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model)))`` of the original
   (trace when script fails).

Each scenario also runs the slim model after the exact CPU deployment rule ``pack_conv`` (weights
packed once for oneDNN, ReLUs fused; "packed slim").

Every variant is also run in channels_last (its best layout may be either). Random weights:
latency does not depend on them. Ratios are ``baseline median / variant median`` (> 1: faster)
and ``baseline peak / variant peak`` for memory (tensor bytes a forward holds beyond its
weights, from the profiler's allocation records: ``deeprebirth.bench.costs.peak_tensor_bytes``).

    python scripts/bench_models.py --image-size 224 --batches 1,8 --threads 2 --repeats 10
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

import deeprebirth
from deeprebirth.bench.costs import peak_tensor_bytes
from deeprebirth.bench.runtimes import eager_channels_last as channels_last
from deeprebirth.bench.runtimes import torchscript_frozen
from deeprebirth.bench.timing import interleaved_timings, machine_line
from deeprebirth.bench.zoo import EXACT_RULES, SLIM_RULES
from deeprebirth.models import build_model


def jit_optimized(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.jit.optimize_for_inference(freeze(script or trace)) of ``model``."""
    return torchscript_frozen(model, x, optimize=True)


def packed_variants(slim_model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """``slim_model`` after the ``pack_conv`` deployment rule, in both layouts."""
    packed, _ = deeprebirth.slim(slim_model, ["pack_conv"], example)
    return {"packed slim": packed, "packed slim channels_last": channels_last(packed)}


def scenario(
    title: str,
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    baseline: str,
    image_size: int,
    batches: list[int],
    repeats: int,
    targets: dict[str, float],
) -> None:
    """Times and measures each variant at each batch size and prints a table of ratios."""
    print(f"\n## {title}")
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size)
        with torch.inference_mode():
            calls = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in variants.items()}
            timings = interleaved_timings(calls, repeats=repeats, warmup=2)
            memory = {name: peak_tensor_bytes(fn) for name, fn in calls.items()}
        base_t, base_m = timings[baseline].median, memory[baseline]
        print(f"\nbatch {batch}, input {tuple(x.shape)}, {repeats} interleaved runs")
        print(
            f"{'variant':<34} {'median ms [min, max]':>30} {'speed-up':>9} {'peak MiB':>9} {'mem ratio':>9}"
        )
        for name in variants:
            t, m = timings[name], memory[name]
            print(
                f"{name:<34} {str(t):>30} {base_t / t.median:>8.2f}x {m / 2**20:>9.1f} "
                f"{base_m / max(m, 1):>8.2f}x"
            )
        base_best = min(
            (n for n in variants if n.startswith(baseline)), key=lambda n: timings[n].median
        )
        for name, target in targets.items():
            best = min((n for n in variants if n.startswith(name)), key=lambda n: timings[n].median)
            ratio = base_t / timings[best].median
            fair = timings[base_best].median / timings[best].median
            print(
                f"target {name}: {ratio:.2f}x ({best} vs {baseline}) vs >= {target}x -> "
                f"{'met' if ratio >= target else 'NOT met'}; best layout vs best layout "
                f"({best} vs {base_best}): {fair:.2f}x; peak memory {base_m / max(memory[best], 1):.2f}x ({best})"
            )


def slim_scenario(
    title: str,
    model: nn.Module,
    rules: Sequence[str],
    example: torch.Tensor,
    batches: list[int],
    args: argparse.Namespace,
    target: float,
) -> None:
    """``model`` eager vs ``deeprebirth.slim(model, rules)`` and its packed form, each in both
    layouts: a :func:`scenario` whose slim and packed slim models should reach ``target``x."""
    slim_model, report = deeprebirth.slim(model, rules, example)
    print("\n" + report.summary())
    scenario(
        title,
        {"eager": model, "eager channels_last": channels_last(model),
         "slim": slim_model, "slim channels_last": channels_last(slim_model),
         **packed_variants(slim_model, example)},  # fmt: skip
        "eager", args.image_size, batches, args.repeats, {"slim": target, "packed slim": target},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", default="googlenet_slim,resnet50,googlenet_jit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*GoogleNetOutputs.*")
    batches = [int(b) for b in args.batches.split(",")]
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    only = set(args.only.split(","))
    print(machine_line())
    print(
        f"deeprebirth {deeprebirth.__version__}, ops: {deeprebirth.build_info().get('parallel_backend', '?')}"
    )

    if "googlenet_slim" in only:
        slim_scenario(
            "bvlc_googlenet vs GoogLeNet-Slim (streamline + branch_slim + exact rules)",
            build_model("bvlc_googlenet"), SLIM_RULES, example, batches, args, 3.0,
        )  # fmt: skip

    if "resnet50" in only:
        slim_scenario(
            "torchvision resnet50 vs fold_bn + fuse_conv_pool + streamline (stem)",
            build_model("torchvision:resnet50"), ["streamline", "fold_bn", "fuse_conv_pool"],
            example, batches, args, 1.3,
        )  # fmt: skip

    if "googlenet_jit" in only:
        model = build_model("torchvision:googlenet", aux_logits=False, init_weights=False)
        slim_model, report = deeprebirth.slim(model, EXACT_RULES, example)
        print("\n" + report.summary())
        print(
            f"  verify: {deeprebirth.verify(model, slim_model, torch.randn(1, 3, args.image_size, args.image_size))}"
        )
        scenario(
            "torchvision googlenet: exact rules vs torch.jit.optimize_for_inference(freeze(script))",
            {"jit optimized": jit_optimized(model, example),
             "jit optimized channels_last": jit_optimized(copy.deepcopy(model).to(memory_format=torch.channels_last),
                                                          example.contiguous(memory_format=torch.channels_last)),
             "eager": model, "eager channels_last": channels_last(model),
             "exact slim": slim_model, "exact slim channels_last": channels_last(slim_model),
             **packed_variants(slim_model, example)},  # fmt: skip
            "jit optimized", args.image_size, batches, args.repeats, {"exact slim": 1.0, "packed slim": 1.0},
        )  # fmt: skip
    return 0
