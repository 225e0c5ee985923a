"""``deeprebirth export``: write a deeprebirth model file as TorchScript, mobile, ONNX, pt2,
ExecuTorch (``.pte``, XNNPACK) or OpenVINO IR (``.xml`` + ``.bin``).

Example::

    deeprebirth export slim.pt --format torchscript --out slim.ts
    deeprebirth-run slim.ts --image cat.jpg --topk 5
    deeprebirth export slim.pt --format executorch --require-full-delegation --out slim.pte
    deeprebirth export slim.pt --format openvino --out slim.xml
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CHECKPOINT, --format, --portable, --out and the optional input geometry."""
    from deeprebirth.export.metadata import FORMATS

    parser.add_argument("checkpoint", help="deeprebirth model file (deeprebirth.io.save_model)")
    parser.add_argument("--format", choices=FORMATS, default="torchscript", help="output format")
    parser.add_argument(
        "--portable",
        action="store_true",
        help="replace deeprebirth ops by standard layers (no deeprebirth library needed to load)",
    )
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument(
        "--require-full-delegation",
        action="store_true",
        help="executorch: fail, naming the operators, unless XNNPACK takes the whole graph",
    )
    parser.add_argument(
        "--precision",
        choices=("f32", "bf16"),
        default="f32",
        help="openvino: inference precision stored in the IR (bf16 moves outputs; it warns by "
        "how much on the example input)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="crop size fed to the model (default: the model file's input_size, else 224 224)",
    )
    parser.add_argument(
        "--resize-size", type=int, help="shorter side before the crop (default: size * 256/224)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        help="input channels (default: the model file's, else the first layer's, else 3)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also read pickled model files of deeprebirth < 2 (runs code from the file: only "
        "for files you made)",
    )


def input_geometry(
    model, metadata: dict, size: list[int] | None, channels: int | None
) -> tuple[int, int, int]:
    """``(C, H, W)`` of the example input: the flags, else the model file's ``input_size`` and
    ``in_channels`` (:func:`deeprebirth.io.stored_input_geometry`), else the first
    convolution's input channels and 224 x 224.

    Raises:
        ValueError: a stored geometry of another form, or sizes below 1.
    """
    from torch import nn

    from deeprebirth.io import stored_input_geometry

    stored_channels, stored_size = stored_input_geometry(metadata)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    c = channels or stored_channels or (first.in_channels if first is not None else 3)
    h, w = size or stored_size or (224, 224)
    if min(int(c), int(h), int(w)) < 1:
        raise ValueError(f"expected positive channels and input size, but got {c}x{h}x{w}")
    return int(c), int(h), int(w)


def run(args: argparse.Namespace) -> int:
    """Loads the model file and exports it; returns 0, or 2 with a message on stderr."""
    import torch

    import deeprebirth
    from deeprebirth.io import load_model

    try:
        model, metadata = load_model(args.checkpoint, trust_pickle=args.trust_pickle)
        channels, height, width = input_geometry(model, metadata, args.input_size, args.channels)
    except (FileNotFoundError, ValueError) as error:
        print(f"deeprebirth export: error: {error}", file=sys.stderr)
        return 2
    overrides = dict(metadata)  # the record takes its geometry from the example input
    if args.resize_size is not None:
        overrides["resize_size"] = args.resize_size
    example = torch.randn(1, channels, height, width)
    try:
        path = deeprebirth.export(
            model,
            example,
            format=args.format,
            portable=args.portable,
            out=args.out,
            metadata=overrides,
            require_full_delegation=args.require_full_delegation,
            precision=args.precision,
        )
    except (ValueError, ImportError) as error:
        print(f"deeprebirth export: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({args.format}{', portable' if args.portable else ''})")
    return 0
