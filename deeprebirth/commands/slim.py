"""``deeprebirth slim``: apply slimming rules to a model and write the model file and a report.

Example:
    deeprebirth slim --model torchvision:resnet50 --rules fold_bn,fuse_conv_pool \\
        --out slim.pt --report slim.md
    deeprebirth slim --model torchvision:resnet18 --in-channels 1 --input-size 96 128 \\
        --num-classes 10 --rules streamline --out gray.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: model, weights, rules, input size, init, output files."""
    parser.add_argument(
        "--model", required=True, help="bvlc_googlenet, torchvision:<name> or timm:<name>"
    )
    parser.add_argument(
        "--weights", default=None, help="local .pth state_dict or torchvision weights name"
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor argument of the model, repeatable (e.g. width=0.25 for "
        "bvlc_googlenet); VALUE is read as JSON when it parses, else as a string",
    )
    parser.add_argument(
        "--rules",
        default="fold_bn,fuse_conv_pool,merge_branches",
        help="comma-separated rule names",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        default=[224],
        metavar="SIZE",
        help="example input size: one number (square) or H W; recorded for export",
    )
    parser.add_argument(
        "--in-channels",
        type=int,
        default=3,
        help="input channels the model is built for (1: grayscale; torchvision models get a "
        "new stem convolution, timm's in_chans); recorded for export",
    )
    parser.add_argument(
        "--init", choices=("xavier", "inherit"), default="xavier", help="new layers' init"
    )
    parser.add_argument(
        "--reduce-factor", type=float, default=0.5, help="branch_slim reducer factor"
    )
    parser.add_argument(
        "--channel-multiple",
        type=int,
        default=16,
        help="branch_slim rounds the new branch widths to multiples of this (1: exact split)",
    )
    parser.add_argument("--out", required=True, help="model file to write (deeprebirth.io format)")
    parser.add_argument("--report", default=None, help="Markdown report to write")
    parser.add_argument("--seed", type=int, default=0, help="seed for new layers' initialisation")


def input_shape(size: list[int], channels: int) -> tuple[int, int, int, int]:
    """The example input ``(1, C, H, W)`` of ``--input-size`` (``[S]`` or ``[H, W]``) and
    ``--in-channels``.

    Raises:
        ValueError: more than two sizes, or a size or channel count below 1.
    """
    if len(size) not in (1, 2):
        raise ValueError(f"--input-size takes one size or H W, but got {len(size)} numbers")
    height, width = size if len(size) == 2 else (size[0], size[0])
    if min(height, width) < 1 or channels < 1:
        raise ValueError(
            f"expected a positive --input-size and --in-channels, but got {height}x{width} and "
            f"{channels} channels"
        )
    return 1, channels, height, width


def model_arguments(pairs: list[str]) -> dict[str, Any]:
    """``--model-arg KEY=VALUE`` pairs as keyword arguments (VALUE as JSON, else a string).

    Raises:
        ValueError: a pair without ``=`` or with an empty key.

    Example:
        >>> model_arguments(["width=0.25", "lrn=false", "norm=bn"])
        {'width': 0.25, 'lrn': False, 'norm': 'bn'}
    """
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg expects KEY=VALUE, but got {pair!r}")
        try:
            kwargs[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key.strip()] = text
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Builds the model, slims it, verifies exact plans, writes model and report; returns 0, 1
    when the exact check fails, or 2 with a message on stderr for a bad model or argument."""
    import deeprebirth
    from deeprebirth.io import save_model
    from deeprebirth.models import build_model

    torch.manual_seed(args.seed)
    try:
        shape = input_shape(args.input_size, args.in_channels)
        kwargs = model_arguments(args.model_arg)
        # Only a non-default count goes to the builder: models registered by users may not know it.
        if args.in_channels != 3:
            kwargs["in_channels"] = args.in_channels
        try:
            model = build_model(
                args.model, num_classes=args.num_classes, weights=args.weights, **kwargs
            )
        except TypeError as error:  # a constructor without a channel argument
            raise ValueError(f"{args.model} cannot be built with {kwargs}: {error}") from error
        x = torch.randn(shape)
        slim_model, report = deeprebirth.slim(
            model,
            args.rules,
            x,
            init=args.init,
            reduce_factor=args.reduce_factor,
            channel_multiple=args.channel_multiple,
        )
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"deeprebirth slim: error: {error}", file=sys.stderr)
        return 2
    check = deeprebirth.verify(model, slim_model, x) if report.exact else None
    metadata = {
        "source_model": args.model,
        "weights": args.weights,
        "num_classes": args.num_classes,
        "rules": report.rules,
        "plan": report.to_dict(),
        "input_size": list(shape[2:]),  # the form export and the finetune job read
        "in_channels": shape[1],
        "exact": report.exact,
    }
    save_model(args.out, slim_model, metadata)
    print(report)
    if check is not None:
        print(f"verify: {check}")
    if args.report:
        text = f"# deeprebirth slim: {args.model}\n\n" + report.to_markdown()
        if check is not None:
            text += f"\nverify (exact plan): {check}\n"
        text += f"\n<details><summary>plan JSON</summary>\n\n```json\n{json.dumps(report.to_dict(), indent=1)}\n```\n</details>\n"
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return 0 if check is None or check.ok else 1
