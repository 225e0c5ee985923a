"""``python -m deeprebirth.finetune --config FILE [key=value ...]`` (also under torchrun).

Same as ``deeprebirth finetune``; see :mod:`deeprebirth.commands.finetune`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deeprebirth.commands import finetune as command


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the job; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m deeprebirth.finetune", description=__doc__.splitlines()[0]
    )
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
