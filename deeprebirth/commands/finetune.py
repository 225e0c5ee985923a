"""``deeprebirth finetune``: the config-driven layer-wise finetuning job.

    deeprebirth finetune --config configs/synthetic_smoke.yaml lr=0.01 schedule.mode=all_at_once
    deeprebirth finetune --resume runs/synthetic_smoke          # continue where it stopped
    torchrun --nproc_per_node=2 -m deeprebirth.finetune --config configs/synthetic_smoke.yaml

The configuration (see ``deeprebirth.train.config``) is validated before any data is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: ``--config FILE``, ``--resume DIR`` and ``key=value`` overrides."""
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR (its config.yaml unless --config is given)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run even if the output_dir holds one (its files are replaced)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read pickled model files of deeprebirth < 2 (runs code from the file)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    """Runs the job; returns 0 on success, 2 on a configuration or data error."""
    from deeprebirth.train.config import ConfigError, load_config
    from deeprebirth.train.data import DataError
    from deeprebirth.train.job import run_job

    overrides = list(args.overrides)
    config = args.config
    if args.resume:
        config = config or str(Path(args.resume) / "config.yaml")
        # The debug stop hook of the interrupted run is not inherited (an override may set it again).
        overrides = [
            "debug.stop_after_steps=0",
            *overrides,
            f"output_dir={args.resume}",
            "resume=true",
        ]
    overrides += ["overwrite=true"] if args.overwrite else []
    overrides += ["trust_pickle=true"] if args.trust_pickle else []
    if config is None:
        print(
            "deeprebirth finetune: error: --config FILE or --resume DIR is required",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = load_config(config, overrides)
        result = run_job(cfg)
    except (ConfigError, DataError) as error:  # raised before any training step
        print(f"deeprebirth finetune: error: {error}", file=sys.stderr)
        return 2
    if result.stopped:
        print(f"stopped early (debug.stop_after_steps); resume with --resume {result.output_dir}")
    else:
        print(f"report: {result.output_dir / 'report.md'}")
    return 0
