"""Runs the benchmark pages a :class:`~deeprebirth.bench.config.SuiteConfig` asks for.

Example:
    >>> from deeprebirth.bench import quick_config, run_suite
    >>> paths = run_suite(quick_config(out=Path("/tmp/results")))  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from deeprebirth.bench import sections
from deeprebirth.bench.config import SuiteConfig
from deeprebirth.bench.context import BenchContext

# Section name -> the page writers it runs, in order.
PAGES = {
    "non_tensor_share": [sections.write_non_tensor_share],
    "layer_times": [sections.write_layer_times],
    "latency": [sections.write_latency, sections.write_peers, sections.write_summary],
    "peers": [sections.write_deployed_vs_peers],
    "profiles": [sections.write_runtime_profiles],
    "memory": [sections.write_memory],
    "roofline": [sections.write_roofline],
}


def run_suite(config: SuiteConfig, context: BenchContext | None = None) -> list[Path]:
    """Measures and writes every page of ``config.sections``; returns the written paths.

    Sets torch's thread count when ``config.threads`` is given. Each page's Markdown holds the
    machine line, the settings and the command that reproduces it. Pass a ``context`` made for
    ``config`` to keep its models, profiles and timings afterwards.
    """
    if context is not None and context.config is not config:
        raise ValueError("context was made for another config")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    ctx = context or BenchContext(config)
    tqdm.write(ctx.machine())  # also configures the allocator before anything is measured
    written: list[Path] = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            for section in tqdm(config.sections, desc="benchmark"):
                started = time.perf_counter()
                for write_page in PAGES[section]:
                    written += write_page(ctx)
                tqdm.write(f"{section}: {time.perf_counter() - started:.1f} s")
    finally:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    return written
