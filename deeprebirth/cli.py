"""The ``deeprebirth`` command line: one sub-command per job.

Each sub-command lives in its own module under ``deeprebirth.commands`` and provides
``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS` maps names to modules so that
``deeprebirth --help`` does not import the heavy ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("deeprebirth.commands.info", "print how the operator library was built"),
    "demo": (
        "deeprebirth.commands.demo",
        "the short DeepRebirth pipeline on Fashion-MNIST: teacher, slim, finetune, verify, export",
    ),
    "check-ops": (
        "deeprebirth.commands.check_ops",
        "check both operators against ATen on GoogLeNet's layer shapes, with timings",
    ),
    "slim": (
        "deeprebirth.commands.slim",
        "apply slimming rules to a model; write model file + report",
    ),
    "finetune": (
        "deeprebirth.commands.finetune",
        "layer-wise finetuning of a slimmed model (YAML config)",
    ),
    "export": (
        "deeprebirth.commands.export",
        "export a model file for deployment (TorchScript, ONNX …)",
    ),
    "quantize": ("deeprebirth.commands.quantize", "int8 quantization (PT2E): .pte or .pt2"),
    "bench": (
        "deeprebirth.commands.bench",
        "benchmark suite: the paper's tables on this machine, peers side by side",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command's arguments."""
    parser = argparse.ArgumentParser(prog="deeprebirth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deeprebirth`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
