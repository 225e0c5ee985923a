"""Shared state of one benchmark run: models built once, profiles, costs and latency timings
measured once and read by every page that needs them."""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from deeprebirth.bench.config import SuiteConfig
from deeprebirth.bench.costs import ModelCosts, model_costs
from deeprebirth.bench.profiling import ForwardProfile, profile_forward
from deeprebirth.bench.roofline import conv_peak_call
from deeprebirth.bench.runtimes import Runtime, build_runtime
from deeprebirth.bench.timing import (
    RUNTIME_SETTLE_MS,
    Timing,
    interleaved_timings,
    machine_line,
    pooled_timings,
)
from deeprebirth.bench.zoo import ModelSpec, build_variant, in_form

LatencyKey = tuple[str, str]  # (model label, runtime name)
_PEAK = "peak convolution"  # its key among the timed calls (runtime keys hold a tab)


class BenchContext:
    """Builds each model once (CPU, eval mode) and caches what pages share.

    Attributes:
        config: the run's settings.
        device: where latency, memory and roofline are measured.
        runtimes: built runtimes by ``(model label, runtime name)``.
        latency: ``{batch: {(model label, runtime name): Timing or None}}`` once
            :meth:`measure_latency` ran (None: the runtime is unavailable).
        peak: ``{batch: (Timing, FLOP)}`` of the peak convolution timed in the same rounds, when
            the run writes the "peers" page (its "% of peak" column divides by it).
        latency_processes: the process ids the latency rounds were timed in (this process's
            alone unless ``config.processes`` > 1).
    """

    def __init__(self, config: SuiteConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested, but torch.cuda.is_available() is False")
        # the runtimes' .pte and ONNX files: deleted with the context, or at exit
        self._workdir = tempfile.TemporaryDirectory(prefix="deeprebirth-bench-")
        self.workdir = Path(self._workdir.name)
        self.runtimes: dict[LatencyKey, Runtime] = {}
        self.latency: dict[int, dict[LatencyKey, Timing | None]] = {}
        self.peak: dict[int, tuple[Timing, int]] = {}
        self.latency_processes: list[int] = []
        self._models: dict[str, nn.Module] = {}
        self._device_models: dict[str, nn.Module] = {}
        self._profiles: dict[tuple[str, int], ForwardProfile] = {}
        self._costs: dict[str, ModelCosts] = {}

    def machine(self) -> str:
        """The machine line (CPU, cores, torch, threads), plus the GPU when measuring on one."""
        line = machine_line()
        if self.device.type == "cuda":
            line += f" | {torch.cuda.get_device_name(self.device)}"
        return line

    def example(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """A seeded random input ``(batch, 3, S, S)``."""
        generator = torch.Generator().manual_seed(batch)
        size = self.config.image_size
        x = torch.randn(batch, 3, size, size, generator=generator)
        return x.to(device or torch.device("cpu"))

    def model(self, spec: ModelSpec) -> nn.Module:
        """The CPU model of ``spec`` (built and slimmed on first use)."""
        if spec.label not in self._models:
            torch.manual_seed(0)
            overrides = self.config.model_kwargs.get(spec.source, {})
            self._models[spec.label] = build_variant(spec, self.config.image_size, **overrides)
        return self._models[spec.label]

    def device_model(self, spec: ModelSpec) -> nn.Module:
        """The model of ``spec`` on the measuring device (the CPU model itself on CPU)."""
        if self.device.type == "cpu":
            return self.model(spec)
        if spec.label not in self._device_models:
            self._device_models[spec.label] = copy.deepcopy(self.model(spec)).to(self.device)
        return self._device_models[spec.label]

    def profile(self, spec: ModelSpec, batch: int) -> ForwardProfile:
        """The CPU operator profile of ``spec`` at ``batch`` (cached)."""
        key = (spec.label, batch)
        if key not in self._profiles:
            self._profiles[key] = profile_forward(
                self.model(spec), self.example(batch), forwards=self.config.profile_forwards
            )
        return self._profiles[key]

    def costs(self, spec: ModelSpec) -> ModelCosts:
        """Parameters, MACs, storage … of ``spec`` at the run's image size (cached)."""
        if spec.label not in self._costs:
            self._costs[spec.label] = model_costs(self.model(spec), self.config.image_size)
        return self._costs[spec.label]

    def timed_call(
        self, run: Callable[[torch.Tensor], object], x: torch.Tensor
    ) -> Callable[[], object]:
        """``run(x)`` as a no-argument call, synchronizing CUDA so the time covers the work."""
        if self.device.type != "cuda":
            return lambda: run(x)

        def call() -> object:
            result = run(x)
            torch.cuda.synchronize(self.device)
            return result

        return call

    def _time_here(self) -> None:
        """Times the built runtimes (and the peak convolution) in this process."""
        available = {key: rt for key, rt in self.runtimes.items() if rt.run is not None}
        # The peak convolution runs in the same rounds, so a drifting machine moves it and the
        # runtimes alike (docs/benchmarks.md).
        peak_call, peak_flops = None, 0
        if "peers" in self.config.sections:
            peak_call, peak_flops = conv_peak_call(
                batch=self.config.peak_conv_batch, device=str(self.device)
            )
        for batch in tqdm(self.config.batches, desc="latency", leave=False):
            x = self.example(batch, self.device)
            calls = {"\t".join(key): self.timed_call(rt.run, x) for key, rt in available.items()}
            if peak_call is not None:
                calls[_PEAK] = self.timed_call(lambda _: peak_call(), x)
            prepare = {"\t".join(key): rt.prepare for key, rt in available.items() if rt.prepare}
            with torch.inference_mode():
                timings = interleaved_timings(
                    calls,
                    self.config.repeats,
                    self.config.warmup,
                    prepare,
                    settle_ms=RUNTIME_SETTLE_MS,
                )
            self.latency[batch] = {key: timings.get("\t".join(key)) for key in self.runtimes}
            if peak_call is not None:
                self.peak[batch] = (timings[_PEAK], peak_flops)
        self.latency_processes = [os.getpid()]

    def _time_in_processes(self) -> None:
        """Times the runtimes in ``config.processes`` fresh processes, one after the other (each
        builds its own, as this one did), and pools their rounds."""
        single = dataclasses.replace(self.config, processes=1)
        spawn = multiprocessing.get_context("spawn")  # fresh: no state inherited from this one
        results = []
        for _ in tqdm(range(self.config.processes), desc="latency processes", leave=False):
            with spawn.Pool(1) as pool:
                results.append(pool.apply(_latency_in_this_process, (single,)))
                pool.close()  # and joined: the process and its resources are gone before the next
                pool.join()
        self.latency_processes = [pid for pid, _, _ in results]
        for batch in self.config.batches:
            # the peak convolution pooled with the runtimes: one round set, paired as before
            parts = []
            for _, latency, peak in results:
                part: dict = {key: latency[batch].get(key) for key in self.runtimes}
                if batch in results[0][2]:
                    part[_PEAK] = peak[batch][0] if batch in peak else None
                parts.append(part)
            pooled = pooled_timings(parts)
            peak_timing = pooled.pop(_PEAK, None)
            self.latency[batch] = pooled
            if peak_timing is not None:
                self.peak[batch] = (peak_timing, results[0][2][batch][1])

    def latency_plan(self) -> dict[str, tuple[ModelSpec, list[str]]]:
        """``{model label: (spec, runtime names)}`` the latency and peer pages need."""
        plan: dict[str, tuple[ModelSpec, list[str]]] = {}

        def want(spec: ModelSpec, names: tuple[str, ...]) -> None:
            entry = plan.setdefault(spec.label, (spec, []))[1]
            entry += [n for n in names if n not in entry]

        for spec in self.config.latency_models:
            want(spec, self.config.latency_runtimes)
        for original, slim in self.config.peer_pairs:
            want(original, self.config.peer_runtimes)
            want(slim, self.config.peer_runtimes)
        if "peers" in self.config.sections:
            for spec in self.config.deployed_models:
                want(in_form(spec, "deployed"), self.config.deployed_runtimes)
                want(in_form(spec, "portable"), self.config.portable_runtimes)
        return plan

    def measure_latency(self) -> dict[int, dict[LatencyKey, Timing | None]]:
        """Builds every runtime of :meth:`latency_plan` and times all of them interleaved, per
        batch size: in this process, or, with ``config.processes`` > 1, in that many fresh
        processes whose rounds are pooled (the runtimes built here give the pages their notes
        and output differences). Runs once; later calls return the cached result."""
        if self.latency:
            return self.latency
        plan = self.latency_plan()
        example = self.example(1, self.device)
        jobs = [(spec, name) for spec, names in plan.values() for name in names]
        for spec, name in tqdm(jobs, desc="build runtimes", leave=False):
            self.runtimes[(spec.label, name)] = build_runtime(
                name,
                self.device_model(spec),
                example,
                threads=torch.get_num_threads(),
                workdir=self.workdir,
            )
        if self.config.processes > 1:
            self._time_in_processes()
        else:
            self._time_here()
        return self.latency


def _latency_in_this_process(config: SuiteConfig) -> tuple[int, dict, dict]:
    """A latency process's work (:meth:`BenchContext.measure_latency` with ``config.processes``
    > 1): this process's id, its latency timings and its peak convolution's."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    context = BenchContext(config)
    context.machine()  # configures the allocator, as run_suite does before measuring
    try:
        latency = context.measure_latency()
    finally:
        shutil.rmtree(context.workdir, ignore_errors=True)
    return os.getpid(), latency, context.peak
