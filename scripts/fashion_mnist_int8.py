"""Fashion-MNIST int8 replication: teacher and student of a finetune run, fp32 and int8, top-1 on
the full test set and batch-1 latency in ExecuTorch-XNNPACK (1 and 2 threads) and inductor with
freezing, all in one process (issue #26's table; the paper's Table 5 pairs slimming with Tucker).

Run the job with its quantize stage first, e.g.::

    deeprebirth finetune --config configs/fashion_mnist_demo.yaml data.val_limit=0 \
        quantize.enabled=true quantize.teacher=true quantize.calibration_images=512 \
        output_dir=runs/int8
    python scripts/fashion_mnist_int8.py runs/int8 --out docs/results/fashion_mnist/int8.md

Top-1 comes from the job's ``eval.csv`` (with ``data.val_limit=0`` the full test set; the int8
rows are its quantize stage's models); latency rows time models quantized on synthetic images
(latency does not depend on the calibration ranges) through ``deeprebirth.bench.runtimes``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from deeprebirth.bench.runtimes import RUNTIMES, build_runtime
from deeprebirth.bench.timing import RUNTIME_SETTLE_MS, interleaved_timings, machine_line
from deeprebirth.io import load_model, stored_input_geometry

MODELS = ("teacher", "student")
FP32 = ("executorch_1t", "executorch_2t", "compile_freezing")
INT8 = ("executorch_int8_1t", "executorch_int8_2t", "inductor_int8")
ALL = (*FP32, *INT8)


def job_top1(run: Path) -> dict[tuple[str, str], float]:
    """Top-1 (%) of teacher/student in fp32/int8 from the job's ``eval.csv``: the teacher's row,
    the student's last stage, and the quantize stage's int8 rows (its ``.pte`` files)."""
    with open(run / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    found: dict[tuple[str, str], float] = {}
    for row in rows:
        label, top1 = row["label"], float(row["top1"])
        if label == "teacher":
            found[("teacher", "fp32")] = top1
        elif label.startswith(("teacher int8", "student int8")):
            found[(label.split()[0], "int8")] = top1
        elif label.startswith("finetune:"):
            found[("student", "fp32")] = top1  # the last stage wins
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="output_dir of the finetune job")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, help="Markdown page to write")
    parser.add_argument(
        "--runtimes",
        default=",".join(ALL),
        help=f"comma-separated subset of {', '.join(ALL)} (must include executorch_1t, "
        "the baseline)",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(ALL))
    if unknown or "executorch_1t" not in chosen:
        print(
            f"error: --runtimes takes {', '.join(ALL)} including executorch_1t, "
            f"but got {args.runtimes!r}",
            file=sys.stderr,
        )
        return 2
    files = [args.run / f"{who}{suffix}" for who in MODELS for suffix in (".pt", "_int8.pte")]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        print(
            f"error: missing {', '.join(missing)} (run the job with quantize.enabled=true "
            "quantize.teacher=true)",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(2)
    loaded = {who: load_model(args.run / f"{who}.pt") for who in MODELS}
    models = {who: model.eval() for who, (model, _) in loaded.items()}
    channels, (height, width) = stored_input_geometry(loaded["teacher"][1])
    accuracy = job_top1(args.run)
    if len(accuracy) != 4:
        print(
            f"error: {args.run / 'eval.csv'} lacks rows: found {sorted(accuracy)}", file=sys.stderr
        )
        return 2

    x = torch.randn(1, channels, height, width)
    calls, prepare = {}, {}
    for who, model in models.items():
        for name in chosen:
            runtime = build_runtime(name, model, x)
            if runtime.run is None:
                print(f"{who} {name}: unavailable ({runtime.note})", file=sys.stderr)
                continue
            calls[(who, name)] = lambda run=runtime.run: run(x)
            if runtime.prepare:
                prepare[(who, name)] = runtime.prepare
    timings = interleaved_timings(
        calls, repeats=args.repeats, prepare=prepare, settle_ms=RUNTIME_SETTLE_MS
    )
    base = timings[("teacher", "executorch_1t")].median

    lines = [
        "# Fashion-MNIST: slimming plus int8",
        "",
        f"Machine: {machine_line()}",
        "",
        f"Run: `{args.run}`; top-1 on the job's validation set (eval.csv; int8: its quantize "
        f"stage's models); batch-1 medians of {args.repeats} interleaved samples, input "
        f"1x{channels}x{height}x{width}, each sample the mean of as many back-to-back calls as "
        "fill a millisecond (calls/sample); speed-up against the fp32 teacher in ExecuTorch "
        "1 thread.",
        "",
        "| model | top-1 (%) | runtime | median (ms) | min-max (ms) | calls/sample | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for (who, name), timing in timings.items():
        precision = "int8" if name in INT8 else "fp32"
        lines.append(
            f"| {who} {precision} | {accuracy[(who, precision)]:.2f} | {RUNTIMES[name]} | "
            f"{timing.median:.3f} | {timing.min:.3f}-{timing.max:.3f} | {timing.calls} | "
            f"{base / timing.median:.2f}x |"
        )
    page = "\n".join(lines) + "\n"
    print(page)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
