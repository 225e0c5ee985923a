"""``deeprebirth export``: write a deeprebirth model file as TorchScript, mobile, ONNX or pt2.

Example::

    deeprebirth export slim.pt --format torchscript --out slim.ts
    deeprebirth-run slim.ts --image cat.jpg --topk 5
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
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="crop size fed to the model (default: the model file's input_size, else 224 224)",
    )
    parser.add_argument(
        "--resize-size", type=int, help="shorter side before the crop (default: size * 256/224)"
    )


def run(args: argparse.Namespace) -> int:
    """Loads the checkpoint and exports it; returns 0, or 1 with a message on stderr."""
    import torch

    import deeprebirth
    from deeprebirth.io import load_model

    try:
        model, metadata = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        print(f"deeprebirth export: error: {error}", file=sys.stderr)
        return 1
    if not isinstance(model, torch.nn.Module):
        print(
            f"deeprebirth export: error: {args.checkpoint} holds a {type(model).__name__}, "
            "not an nn.Module",
            file=sys.stderr,
        )
        return 1
    height, width = args.input_size or metadata.get("input_size") or (224, 224)
    overrides = dict(metadata)
    overrides.pop("input_size", None)
    if args.resize_size is not None:
        overrides["resize_size"] = args.resize_size
    example = torch.randn(1, int(metadata.get("in_channels", 3)), int(height), int(width))
    try:
        path = deeprebirth.export(
            model,
            example,
            format=args.format,
            portable=args.portable,
            out=args.out,
            metadata=overrides,
        )
    except (ValueError, ImportError) as error:
        print(f"deeprebirth export: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({args.format}{', portable' if args.portable else ''})")
    return 0
