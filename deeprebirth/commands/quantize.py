"""``deeprebirth quantize``: int8 quantization (PT2E) of a model file, calibrated on images, shipped
as an ExecuTorch ``.pte`` (``--backend xnnpack``) or a ``torch.export`` ``.pt2`` for inductor
(``--backend x86_inductor``).

Example::

    deeprebirth quantize runs/demo/student.pt --backend xnnpack \\
        --calibration fashion_mnist --fit pad --out student_int8.pte
    deeprebirth quantize slim.pt --backend x86_inductor --calibration /data/val --out slim_int8.pt2

Everything is checked before any work: the backend (and its packages), the model file, the
calibration source (a folder without images, a missing data set), and that ``torch.export`` can
capture the model; each failure exits with code 2 and a message that names it.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --backend, --calibration, --out and the calibration / QAT options."""
    from deeprebirth.quantize.backends import BACKENDS

    parser.add_argument("model", help="deeprebirth model file (deeprebirth.io.save_model)")
    parser.add_argument("--backend", choices=BACKENDS, required=True, help="int8 backend")
    parser.add_argument(
        "--calibration",
        required=True,
        metavar="DATA",
        help="calibration images: an image folder, 'fashion_mnist[:ROOT]' or 'synthetic'",
    )
    parser.add_argument(
        "--out", required=True, help="output file (.pte for xnnpack, .pt2 for x86_inductor)"
    )
    parser.add_argument(
        "--calibration-images", type=int, default=256, help="images to calibrate on (at most)"
    )
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per tensor instead of per output channel (xnnpack only)",
    )
    parser.add_argument(
        "--qat-steps",
        type=int,
        default=0,
        help="quantization-aware steps after calibration, distilling the float model (0: none)",
    )
    parser.add_argument("--qat-lr", type=float, default=1e-4, help="SGD learning rate of QAT")
    parser.add_argument("--batch-size", type=int, default=32, help="calibration / QAT batch")
    parser.add_argument(
        "--fit",
        choices=("resize", "pad"),
        default="resize",
        help="fashion_mnist: resize or pad the 28x28 images to the input (the job's data.fit)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size (default: the model file's input_size, else 224 224)",
    )
    parser.add_argument(
        "--channels", type=int, help="input channels (default: the model file's, else 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic images")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also read pickled model files of deeprebirth < 2 (runs code from the file)",
    )


def _agreement(model: torch.nn.Module, quantized, batch: torch.Tensor) -> str:
    """How close the int8 model is to the float one on ``batch``."""
    with torch.no_grad():
        expected, actual = model(batch), quantized(batch)
    same = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    return (
        f"on {len(batch)} calibration images: int8 top-1 = float top-1 for {100 * same:.1f}%, "
        f"max |logit difference| {(actual - expected).abs().max().item():.4g} (largest |logit| "
        f"{expected.abs().max().item():.4g})"
    )


def run(args: argparse.Namespace) -> int:
    """Checks everything, quantizes, writes ``--out``; returns 0, or 2 with a message on stderr."""
    from deeprebirth.commands.export import input_geometry
    from deeprebirth.export.metadata import ExportMetadata
    from deeprebirth.io import load_model
    from deeprebirth.quantize import (
        check_backend,
        collect_calibration_batches,
        quantize_model,
        save_quantized,
    )
    from deeprebirth.quantize.sources import calibration_source

    try:
        check_backend(args.backend, per_channel=not args.per_tensor)
        if args.qat_steps < 0 or args.batch_size < 1 or not args.qat_lr > 0:
            raise ValueError(
                f"expected --qat-steps >= 0, --batch-size >= 1 and --qat-lr > 0, but got "
                f"{args.qat_steps}, {args.batch_size} and {args.qat_lr}"
            )
        model, metadata = load_model(args.model, trust_pickle=args.trust_pickle)
        shape = input_geometry(model, metadata, args.input_size, args.channels)
        example = torch.zeros(1, *shape)
        fields = {k: v for k, v in metadata.items() if k != "input_size"}
        record = ExportMetadata.build(example, fields)
        source = calibration_source(
            args.calibration, shape, record, args.calibration_images, args.seed, args.fit
        )
        batches = collect_calibration_batches(source, shape, batch_size=args.batch_size)
        quantized = quantize_model(
            model,
            batches,
            args.backend,
            per_channel=not args.per_tensor,
            qat_steps=args.qat_steps,
            qat_lr=args.qat_lr,
            batch_size=args.batch_size,
            example_input=example,
        )
        saved = save_quantized(quantized, args.out, record)
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"deeprebirth quantize: error: {error}", file=sys.stderr)
        return 2
    print(f"calibration: {source.description}")
    print(f"quantized: {quantized.describe()}")
    print(saved.summary())
    print(_agreement(copy.deepcopy(model).eval(), quantized, batches[0]))
    return 0
