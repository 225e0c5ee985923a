"""``deeprebirth slim``: apply slimming rules to a model and write the model file and a report.

Example:
    deeprebirth slim --model torchvision:resnet50 --rules fold_bn,fuse_conv_pool \\
        --out slim.pt --report slim.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: model, weights, rules, input size, init, output files."""
    parser.add_argument("--model", required=True, help="bvlc_googlenet or torchvision:<name>")
    parser.add_argument(
        "--weights", default=None, help="local .pth state_dict or torchvision weights name"
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    parser.add_argument(
        "--rules",
        default="fold_bn,fuse_conv_pool,merge_branches",
        help="comma-separated rule names",
    )
    parser.add_argument(
        "--input-size", type=int, default=224, help="example input height and width"
    )
    parser.add_argument(
        "--init", choices=("xavier", "inherit"), default="xavier", help="new layers' init"
    )
    parser.add_argument(
        "--reduce-factor", type=float, default=0.5, help="branch_slim reducer factor"
    )
    parser.add_argument("--out", required=True, help="model file to write (deeprebirth.io format)")
    parser.add_argument("--report", default=None, help="Markdown report to write")
    parser.add_argument("--seed", type=int, default=0, help="seed for new layers' initialisation")


def run(args: argparse.Namespace) -> int:
    """Builds the model, slims it, verifies exact plans, writes model and report; returns 0 or 1."""
    import deeprebirth
    from deeprebirth.io import save_model
    from deeprebirth.models import build_model

    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=args.num_classes, weights=args.weights)
    x = torch.randn(1, 3, args.input_size, args.input_size)
    slim_model, report = deeprebirth.slim(
        model, args.rules, x, init=args.init, reduce_factor=args.reduce_factor
    )
    check = deeprebirth.verify(model, slim_model, x) if report.exact else None
    metadata = {
        "source_model": args.model,
        "weights": args.weights,
        "num_classes": args.num_classes,
        "rules": report.rules,
        "plan": report.to_dict(),
        "input_size": [3, args.input_size, args.input_size],
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
