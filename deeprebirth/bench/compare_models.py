"""Latency of two saved models side by side (e.g. a finetune run's teacher and student; not a test).

For every thread count, batch size and runtime it times both models interleaved in one process
and prints a Markdown table: median latency of each, and ``baseline / candidate`` (> 1: the
candidate is faster) as the median of the per-round ratios. A last row per thread count and
batch compares each model in its own best runtime. Each runtime's pair is timed in a block of
its own; ``--blocks N`` repeats the blocks, runtimes taking turns, and adds the range of the
per-block speed-ups (the machine's drift).
Input shape comes from ``--input-shape`` or the run's ``config.yaml`` next to the files.
``--candidate-rules`` / ``--baseline-rules`` first apply exact deployment rules to that model
(e.g. ``pack_conv``), checked against the loaded model; ``--candidate-flatten`` /
``--baseline-flatten`` then flatten it (``deeprebirth.surgery.flatten_for_inference``).

    python scripts/compare_models.py runs/fashion_mnist_googlenet/teacher.pt \\
        runs/fashion_mnist_googlenet/student.pt --threads 1,2 --batches 1 \\
        --runtimes eager,eager_channels_last,torchscript,onnxruntime --out speed.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import yaml

import deeprebirth
from deeprebirth.bench.runtimes import RUNTIMES, build_runtime
from deeprebirth.bench.timing import (
    RUNTIME_SETTLE_MS,
    Timing,
    interleaved_timings,
    machine_line,
    paired_ratio,
)
from deeprebirth.io import load_model


def int_list(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; raises ``argparse.ArgumentTypeError`` naming the bad item."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """``"3"`` -> ``3``; raises ``argparse.ArgumentTypeError`` unless a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def input_shape_of(model_path: Path, given: list[int] | None) -> tuple[int, int, int]:
    """(C, H, W) from ``given`` or from the ``config.yaml`` of the run folder holding the model."""
    if given:
        if len(given) != 3:
            raise SystemExit(f"--input-shape expects C,H,W (3 numbers), got {given}")
        return tuple(given)  # type: ignore[return-value]
    config = model_path.parent / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"no --input-shape given and no {config} to read it from")
    model = yaml.safe_load(config.read_text())["model"]
    return (model["in_channels"], model["input_size"], model["input_size"])


def deployed(
    model: torch.nn.Module, rules: list[str], flatten: bool, shape: tuple[int, int, int]
) -> torch.nn.Module:
    """``model`` after the exact ``rules`` and, with ``flatten``, flattened (``model`` itself
    when neither); exits naming the problem when a rule is inexact or the outputs moved beyond
    1e-4 relative."""
    if not rules and not flatten:
        return model
    example = torch.randn(2, *shape)
    result = model
    if rules:
        result, report = deeprebirth.slim(model, rules, example)
        if not report.exact:
            raise SystemExit(f"rules {rules} are not exact; compare the finetuned model instead")
    if flatten:
        result = deeprebirth.surgery.flatten_for_inference(result.eval())
        deeprebirth.nn.freeze_packed_weights(result)  # a fresh copy whose weights stay
    check = deeprebirth.verify(model, result, example)
    if check.max_rel > 1e-4:
        raise SystemExit(f"rules {rules} (flatten={flatten}) changed the outputs: {check}")
    return result.eval()


def compare(
    models: dict[str, torch.nn.Module],
    shape: tuple[int, int, int],
    threads: list[int],
    batches: list[int],
    runtimes: list[str],
    repeats: int,
    blocks: int = 1,
) -> list[str]:
    """Markdown table rows: per threads x batch x runtime, both models' medians and the ratio.

    Each runtime's two models are timed interleaved in a block of their own, after the
    runtime's ``prepare`` (ExecuTorch sizes its process-wide pool there): with every runtime in
    one round, one runtime's idle thread pool slows the next (docs/benchmarks.md, "Measurement
    traps").

    The speed-up is the median of the per-round ratios (:func:`paired_ratio`): the two models of
    a runtime run back to back in each round, so a machine that changes speed between rounds or
    blocks does not move it. With ``blocks`` > 1 the runtimes take turns, block after block, and
    the table gains the lowest and highest per-block speed-up: how far the ratio itself moved.
    The medians in milliseconds are over every block's samples. The "best of each" row pairs two
    runtimes timed in different blocks, so its speed-up is the ratio of their medians.
    """
    baseline, candidate = list(models)
    spread = blocks > 1
    rows = [
        f"| threads | batch | runtime | {baseline} (ms) | {candidate} (ms) | speed-up |"
        + (f" per-block speed-ups ({blocks} blocks) |" if spread else ""),
        "|---|---|---|---|---|---|" + ("---|" if spread else ""),
    ]
    temporary = tempfile.TemporaryDirectory(prefix="deeprebirth-compare-")  # deleted at exit
    workdir = Path(temporary.name)
    for thread_count in threads:
        torch.set_num_threads(thread_count)
        for batch in batches:
            x = torch.randn(batch, *shape)
            built = {}
            for runtime in runtimes:
                for name, model in models.items():
                    result = build_runtime(runtime, model, x, thread_count, workdir)
                    if result.run is None:
                        print(f"{name} / {runtime}: {result.note}", file=sys.stderr)
                        continue
                    built[(runtime, name)] = result
            per_block: dict[tuple[str, str], list[Timing]] = {key: [] for key in built}
            for _ in range(blocks):
                for runtime in runtimes:
                    keys = [key for key in built if key[0] == runtime]
                    forwards = {key: lambda run=built[key].run, x=x: run(x) for key in keys}
                    prepare = {key: built[key].prepare for key in keys if built[key].prepare}
                    with torch.inference_mode():
                        block = interleaved_timings(
                            forwards, repeats, prepare=prepare, settle_ms=RUNTIME_SETTLE_MS
                        )
                    for key, timing in block.items():
                        per_block[key].append(timing)
            timings = {key: _pooled(block) for key, block in per_block.items()}
            best = {}
            for runtime in runtimes:
                pair = [timings.get((runtime, name)) for name in models]
                for name, timing in zip(models, pair, strict=True):
                    if timing is not None and (
                        name not in best or timing.median < best[name][1].median
                    ):
                        best[name] = (runtime, timing)
                if None in pair:
                    continue
                row = (
                    f"| {thread_count} | {batch} | {RUNTIMES[runtime]} | {pair[0].median:.3f} | "
                    f"{pair[1].median:.3f} | {paired_ratio(*pair):.2f}x |"
                )
                if spread:
                    ratios = [
                        paired_ratio(a, b)
                        for a, b in zip(
                            per_block[(runtime, baseline)],
                            per_block[(runtime, candidate)],
                            strict=True,
                        )
                    ]
                    row += f" {min(ratios):.2f}-{max(ratios):.2f}x |"
                rows.append(row)
            if len(best) == 2:
                (base_rt, base_t), (cand_rt, cand_t) = best[baseline], best[candidate]
                rows.append(
                    f"| {thread_count} | {batch} | best of each ({RUNTIMES[base_rt]} / "
                    f"{RUNTIMES[cand_rt]}) | {base_t.median:.3f} | {cand_t.median:.3f} | "
                    f"{base_t.median / cand_t.median:.2f}x |" + (" - |" if spread else "")
                )
    temporary.cleanup()
    return rows


def _pooled(blocks: list[Timing]) -> Timing:
    """One Timing of every block's samples, in block order, so two models' pooled samples stay
    paired round by round (their calls per sample may differ: the largest)."""
    return Timing(
        tuple(sample for block in blocks for sample in block.samples),
        max(block.calls for block in blocks),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="model file (deeprebirth.io.save_model)")
    parser.add_argument("candidate", type=Path, help="model file to compare against baseline")
    parser.add_argument("--threads", type=int_list, default=[torch.get_num_threads()])
    parser.add_argument("--batches", type=int_list, default=[1])
    parser.add_argument(
        "--runtimes",
        default="eager,eager_channels_last,torchscript",
        help=f"comma-separated, from {sorted(RUNTIMES)}",
    )
    parser.add_argument("--input-shape", type=int_list, default=None, help="C,H,W")
    for side in ("baseline", "candidate"):
        parser.add_argument(
            f"--{side}-rules",
            default="",
            help=f"comma-separated exact rules applied to the {side} first (e.g. pack_conv)",
        )
        parser.add_argument(
            f"--{side}-flatten",
            action="store_true",
            help=f"flatten the {side} into one fx graph without no-op layers",
        )
    parser.add_argument("--repeats", type=int, default=30, help="timed interleaved rounds")
    parser.add_argument(
        "--blocks",
        type=positive_int,
        default=1,
        help="blocks of --repeats rounds per runtime, runtimes taking turns; above 1 the table "
        "adds the per-block speed-ups' range (how much the machine drifted)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        parser.error(f"unknown runtime(s) {unknown}; expected some of {sorted(RUNTIMES)}")
    shape = input_shape_of(args.baseline, args.input_shape)
    models = {}
    sides = (
        (args.baseline, args.baseline_rules, args.baseline_flatten),
        (args.candidate, args.candidate_rules, args.candidate_flatten),
    )
    for path, rule_text, flatten in sides:
        rules = [r.strip() for r in rule_text.split(",") if r.strip()]
        label = path.stem + "".join(f" + {step}" for step in [*rules, *["flat"] * flatten])
        models[label] = deployed(load_model(path)[0].float().eval(), rules, flatten, shape)
    if len(models) != 2:
        parser.error("the two model files need different names (their stems label the table)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rows = compare(
            models, shape, args.threads, args.batches, runtimes, args.repeats, args.blocks
        )
    note = (
        "speed-up: the median over rounds of baseline / candidate, the two timed back to back in "
        "each round; best of each: the ratio of the two medians"
    )
    text = "\n".join([f"Machine: {machine_line()}", f"Input: {shape}", "", *rows, "", note]) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0
