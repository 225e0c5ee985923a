"""``deeprebirth info``: print build facts of the operator library."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    """Prints :func:`deeprebirth.build_info` as JSON."""
    import deeprebirth

    print(json.dumps(deeprebirth.build_info(), indent=2))
    return 0
