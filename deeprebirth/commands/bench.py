"""``deeprebirth bench``: rebuild the paper's tables on this machine, peers side by side.

Example::

    deeprebirth bench --quick                       # minutes; every page, small settings
    deeprebirth bench --threads 2 --out docs/results   # the full run (224x224, batches 1 and 8)
    deeprebirth bench --sections latency,memory --batches 1,16

Writes Markdown tables and PNG plots into ``--out`` (see :mod:`deeprebirth.bench`).
"""

from __future__ import annotations

import argparse
import shlex
import sys


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(item) for item in text.split(",") if item)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {error}") from error

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: preset, output folder, sizes, repetitions, threads, device, sections."""
    from deeprebirth.bench.config import SECTIONS

    parser.add_argument(
        "--quick",
        action="store_true",
        help="small settings (112x112, batches 1,4, 3 rounds): every page in minutes",
    )
    parser.add_argument("--out", default=None, help="output folder (default docs/results)")
    parser.add_argument("--image-size", type=int, default=None, help="input height and width")
    parser.add_argument("--batches", type=_csv(int), default=None, help="e.g. 1,8")
    parser.add_argument("--repeats", type=int, default=None, help="timed interleaved rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="fresh processes to time the latency rounds in, pooled (default 1: this one)",
    )
    parser.add_argument(
        "--profile-forwards", type=int, default=None, help="profiled forwards per model"
    )
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: as is)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--memory-budget-mib", type=int, default=None, help="budget of the max-batch column"
    )
    parser.add_argument(
        "--sections",
        type=_csv(str),
        default=None,
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="leave torch.compile out of every runtime list"
    )
    parser.add_argument(
        "--models",
        type=_csv(str),
        default=None,
        help="keep only these models (labels, e.g. GoogLeNet,GoogLeNet-Slim,ResNet-50) in the "
        "latency, memory and roofline tables, the peer pairs and the deployed-vs-peers page; at "
        "least one latency model",
    )
    parser.add_argument(
        "--latency-runtimes",
        type=_csv(str),
        default=None,
        help="the latency tables' runtimes, in order (names, e.g. onnxruntime,executorch_1t,"
        "executorch_int8_1t; default: all of them)",
    )


def _command_line() -> str:
    """How this process was started: ``deeprebirth bench …`` or ``python scripts/benchmark.py …``."""
    program = sys.argv[0] if sys.argv else "deeprebirth"
    launcher = f"python {program}" if program.endswith(".py") else "deeprebirth"
    return f"{launcher} {shlex.join(sys.argv[1:])}".strip()


def config_from_args(args: argparse.Namespace):
    """The :class:`~deeprebirth.bench.config.SuiteConfig` the options describe."""
    from deeprebirth.bench.config import (
        DEPLOYED_FORM_RUNTIMES,
        LATENCY_RUNTIMES,
        PEER_RUNTIMES,
        PORTABLE_FORM_RUNTIMES,
        SuiteConfig,
        quick_config,
    )
    from deeprebirth.bench.runtimes import RUNTIMES

    overrides = {
        "out": args.out,
        "image_size": args.image_size,
        "batches": args.batches,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "processes": args.processes,
        "profile_forwards": args.profile_forwards,
        "memory_budget_mib": args.memory_budget_mib,
        "sections": args.sections,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    overrides.update(threads=args.threads, device=args.device)
    if args.no_compile:
        for key, names in (
            ("latency_runtimes", LATENCY_RUNTIMES),
            ("peer_runtimes", PEER_RUNTIMES),
            ("deployed_runtimes", DEPLOYED_FORM_RUNTIMES),
            ("portable_runtimes", PORTABLE_FORM_RUNTIMES),
        ):
            overrides[key] = tuple(r for r in names if not r.startswith("compile"))
    if args.latency_runtimes:
        unknown = [name for name in args.latency_runtimes if name not in RUNTIMES]
        if unknown:
            raise ValueError(
                f"expected --latency-runtimes among {sorted(RUNTIMES)}, but got {unknown}"
            )
        overrides["latency_runtimes"] = tuple(args.latency_runtimes)
    overrides["command"] = _command_line()
    config = quick_config(**overrides) if args.quick else SuiteConfig(**overrides)
    if args.models:
        config = _only_models(config, args.models)
    return config


def _only_models(config, labels: tuple[str, ...]):
    """``config`` with its latency models, peer pairs and deployed models restricted to
    ``labels``.

    Raises:
        ValueError: a label names no latency, peer-pair or deployed model of the config, or no
            latency model is left.
    """
    from dataclasses import replace

    known = {s.label for s in config.latency_models}
    known |= {s.label for pair in config.peer_pairs for s in pair}
    known |= {s.label for s in config.deployed_models}
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ValueError(f"expected --models among {sorted(known)}, but got {unknown}")
    latency_models = [s for s in config.latency_models if s.label in labels]
    if not latency_models:
        raise ValueError(f"expected --models to keep a latency model, one of {sorted(known)}")
    return replace(
        config,
        latency_models=latency_models,
        peer_pairs=[p for p in config.peer_pairs if all(s.label in labels for s in p)],
        deployed_models=[s for s in config.deployed_models if s.label in labels],
    )


def run(args: argparse.Namespace) -> int:
    """Runs the suite; returns 0, or 2 on bad settings."""
    from deeprebirth.bench.suite import run_suite

    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"deeprebirth bench: error: {error}", file=sys.stderr)
        return 2
    for path in run_suite(config):
        print(f"wrote {path}")
    return 0
