"""The pages of the benchmark, one function each: it measures what it needs through the
:class:`~deeprebirth.bench.context.BenchContext`, writes ``<name>.md`` (and PNGs) into the output
folder and returns the written paths."""

from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from deeprebirth.bench import plots
from deeprebirth.bench.config import INT8_OF
from deeprebirth.bench.context import BenchContext
from deeprebirth.bench.costs import max_batch_within, measure_peak_memory
from deeprebirth.bench.profiling import TENSOR_OP_PATTERNS
from deeprebirth.bench.roofline import (
    achieved_gflops,
    arithmetic_intensity,
    attainable_gflops,
    peak_copy_gbps,
    peak_gemm_gflops,
    peak_gflops,
    share_of_peak,
)
from deeprebirth.bench.runtime_profiles import runtime_profiles_page
from deeprebirth.bench.runtimes import RUNTIMES
from deeprebirth.bench.tables import (
    MISSING,
    ResultPage,
    ratio,
    ratio_cell,
    timing_cell,
    timing_rows,
)
from deeprebirth.bench.zoo import in_form, top_level_blocks

MIB = 2**20
# flagged rows, left out of the fp32 verdicts
REDUCED_PRECISION = ("openvino_bf16", "executorch_int8_1t", "executorch_int8_2t", "inductor_int8")
CLASSIFICATION_NOTE = (
    "Top-level operators recorded by `torch.profiler` (an operator called inside another one "
    "counts as part of its caller). Tensor operators: names containing "
    + ", ".join(f"`{p}`" for p in TENSOR_OP_PATTERNS)
    + " (convolutions, matrix products, deeprebirth's fused conv ops); everything else "
    "(pooling, ReLU, LRN, BatchNorm, concat, copies) is non-tensor, the C++ runner's rule."
)


def slug(label: str) -> str:
    """``"GoogLeNet (torchvision)" -> "googlenet_torchvision"`` for file names."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _write(ctx: BenchContext, page: ResultPage, name: str) -> Path:
    return page.write(ctx.config.out / f"{name}.md", ctx.machine(), ctx.config.command)


def write_non_tensor_share(ctx: BenchContext) -> list[Path]:
    """Table 1 analog: share of operator time in non-tensor layers per model and batch (CPU)."""
    cfg = ctx.config
    page = ResultPage(
        "Table 1 analog: forward time in tensor vs non-tensor layers (CPU)", cfg.settings_line()
    )
    shares: dict[str, float] = {}
    for batch in cfg.batches:
        rows = []
        for spec in cfg.non_tensor_models:
            profile = ctx.profile(spec, batch)
            share = profile.non_tensor_share()
            if batch == cfg.batches[0]:
                shares[spec.label] = share
            per_forward = profile.op_ms() / profile.forwards
            largest = [
                f"{name.split('::')[-1]} {100 * ms / per_forward:.1f}%"
                for name, (ms, _, tensor) in profile.op_totals().items()
                if not tensor
            ][:3]
            rows.append(
                [
                    spec.label,
                    f"{profile.forward_ms():.2f}",
                    f"{100 * (1 - share):.1f}",
                    f"{100 * share:.1f}",
                    ", ".join(largest) or "-",
                ]
            )
        page.add_table(
            f"batch {batch}",
            [
                "model",
                "forward ms (profiled)",
                "tensor %",
                "non-tensor %",
                "largest non-tensor ops",
            ],
            rows,
        )
    page.add_text(CLASSIFICATION_NOTE)
    png = plots.plot_non_tensor_share(
        shares,
        f"non-tensor share, batch {cfg.batches[0]}, {cfg.image_size}x{cfg.image_size}",
        cfg.out / "table1_non_tensor_share.png",
    )
    page.add_image("non-tensor share per model", png.name)
    return [_write(ctx, page, "table1_non_tensor_share"), png]


def write_layer_times(ctx: BenchContext) -> list[Path]:
    """Figure 2 analog: per-layer time, tensor vs non-tensor, one PNG per model, and a table
    of time per layer kind."""
    cfg = ctx.config
    batch = cfg.batches[0]
    page = ResultPage("Figure 2 analog: time per layer (CPU)", cfg.settings_line())
    written: list[Path] = []
    for spec in cfg.layer_time_models:
        profile = ctx.profile(spec, batch)
        layers = profile.layer_times()
        png = plots.plot_layer_times(
            layers,
            f"{spec.label}: time per layer, batch {batch}, {cfg.image_size}x{cfg.image_size}",
            cfg.out / f"figure2_{slug(spec.label)}.png",
        )
        written.append(png)
        by_kind: dict[str, list[float]] = {}
        for layer in layers:
            entry = by_kind.setdefault(layer.kind, [0.0, 0.0, 0])
            entry[0] += layer.tensor_ms
            entry[1] += layer.non_tensor_ms
            entry[2] += 1
        total = sum(layer.total_ms for layer in layers) or 1.0
        rows = [
            [
                kind,
                count,
                f"{tensor_ms + other_ms:.3f}",
                f"{100 * (tensor_ms + other_ms) / total:.1f}",
                "tensor" if tensor_ms >= other_ms else "non-tensor",
            ]
            for kind, (tensor_ms, other_ms, count) in sorted(
                by_kind.items(), key=lambda item: -(item[1][0] + item[1][1])
            )
        ]
        page.add_table(
            f"{spec.label}, batch {batch}: time per layer kind",
            ["layer kind", "layers", "ms per forward", "% of operator time", "class"],
            rows,
        )
        page.add_image(f"{spec.label} per-layer time", png.name)
    page.add_text(
        "A layer is a leaf module, or a functional operator a container calls itself "
        "(`inception_3a:cat`). " + CLASSIFICATION_NOTE
    )
    return [_write(ctx, page, "figure2_layer_times"), *written]


def _block_table(ctx: BenchContext, page: ResultPage) -> None:
    """Per-block eager time of the GoogLeNet variants (the first latency model's family)."""
    cfg = ctx.config
    batch = cfg.batches[0]
    family = [s for s in cfg.latency_models if s.source == cfg.latency_models[0].source]
    profiles = {s.label: ctx.profile(s, batch) for s in family}
    blocks = top_level_blocks(ctx.model(family[0]))
    block_ms = {label: p.block_ms(blocks) for label, p in profiles.items()}
    first = family[0].label
    header = ["block", *(f"{s.label} ms" for s in family)]
    header += [f"{s.label} speed-up" for s in family[1:]]

    def row(name: str, values: dict[str, float | None]) -> list[str]:
        cells = [
            f"{values[s.label]:.2f}" if values[s.label] is not None else MISSING for s in family
        ]
        base = values[first]
        for s in family[1:]:
            value = values[s.label]
            cells.append(ratio_cell(base / value if base and value else None))
        return [name, *cells]

    rows = [row(b, {label: block_ms[label].get(b) for label in block_ms}) for b in blocks]
    rows.append(
        row("**total (profiled forward)**", {lb: p.forward_ms() for lb, p in profiles.items()})
    )
    eager = ctx.latency[batch]
    rows.append(
        row(
            "**total (eager latency, median)**",
            {
                s.label: eager[(s.label, "eager")].median if eager.get((s.label, "eager")) else None
                for s in family
            },
        )
    )
    page.add_table(
        f"per-block eager time, batch {batch} (Table 4 analog)",
        header,
        rows,
        "Block times are medians over profiled forwards (the profiler adds a little per operator); "
        "speed-up = first column / this column.",
    )


def _int8_table(ctx: BenchContext, page: ResultPage, batch: int) -> None:
    """Table 5 with int8 models as rows (GoogLeNet-Int8, GoogLeNet-Slim-Int8 …) beside the fp32
    ones: each column one runtime, its int8 form in the int8 rows (:data:`INT8_OF`), speed-ups
    against the first model in fp32. Written when the latency runtimes include an int8 one."""
    cfg = ctx.config
    columns = [(f, q) for f, q in INT8_OF.items() if q in cfg.latency_runtimes]
    if not columns:
        return
    latency = ctx.latency[batch]
    first = cfg.latency_models[0].label
    header = ["model"]
    for fp32, _ in columns:
        header += [f"{RUNTIMES[fp32]} ms", "speed-up"]
    rows = []
    for suffix, pick in (("", 0), ("-Int8", 1)):
        for spec in cfg.latency_models:
            cells = [spec.label + suffix]
            for pair in columns:
                timing = latency.get((spec.label, pair[pick]))
                cells += [
                    timing_cell(timing),
                    ratio_cell(ratio(latency.get((first, pair[0])), timing)),
                ]
            rows.append(cells)
    names = ", ".join(f"{RUNTIMES[f]} → {RUNTIMES[q]}" for f, q in columns)
    page.add_table(
        f"total latency with int8 models as rows, batch {batch} (Table 5 analog)",
        header,
        rows,
        f"-Int8 rows run the int8 form of each column's runtime ({names}; quantized by PT2E on "
        f"32 random images, docs/quantize.md). Speed-up: {first} in fp32 / this row, in the "
        "same column.",
    )


def write_latency(ctx: BenchContext) -> list[Path]:
    """Tables 4/5 analog: per-block time of the GoogLeNet variants and total latency of every
    latency model in each runtime, per batch; plus ``latency.png`` (first batch)."""
    cfg = ctx.config
    latency = ctx.measure_latency()
    page = ResultPage("Tables 4/5 analog: latency per block and in total", cfg.settings_line())
    _block_table(ctx, page)
    runtimes = cfg.latency_runtimes
    for batch in cfg.batches:
        first = cfg.latency_models[0].label
        header = ["model"]
        for name in runtimes:
            header += [f"{RUNTIMES[name]} ms", f"{RUNTIMES[name]} speed-up"]
        rows = []
        for spec in cfg.latency_models:
            cells = [spec.label]
            for name in runtimes:
                timing = latency[batch].get((spec.label, name))
                cells += [
                    timing_cell(timing),
                    ratio_cell(ratio(latency[batch].get((first, name)), timing)),
                ]
            rows.append(cells)
        page.add_table(
            f"total latency, batch {batch} (Table 5 analog)",
            header,
            rows,
            f"Speed-up: {first} / this model, in the same runtime.",
        )
        _int8_table(ctx, page, batch)
    unavailable = [
        f"- {label}, {RUNTIMES[name]}: {rt.note}"
        for (label, name), rt in ctx.runtimes.items()
        if rt.run is None
    ]
    if unavailable:
        page.add_text("Unavailable runtimes:\n\n" + "\n".join(unavailable))
    first_batch = cfg.batches[0]
    png = plots.plot_latency(
        {
            spec.label: {
                RUNTIMES[name]: latency[first_batch].get((spec.label, name)) for name in runtimes
            }
            for spec in cfg.latency_models
        },
        f"latency, batch {first_batch}, {cfg.image_size}x{cfg.image_size}",
        cfg.out / "latency.png",
    )
    page.add_image("latency per model and runtime", png.name)
    return [_write(ctx, page, "table4_5_latency"), png]


def peer_verdicts(ctx: BenchContext, batch: int) -> list[str]:
    """One sentence per peer pair: does the slim model in plain eager beat every runtime's fp32
    form of the original?"""
    lines = []
    latency = ctx.latency[batch]
    for original, slim in ctx.config.peer_pairs:
        slim_eager = latency.get((slim.label, "eager"))
        forms = {  # fp32 forms only: a bf16 result is not the same computation
            name: latency.get((original.label, name))
            for name in ctx.config.peer_runtimes
            if latency.get((original.label, name)) is not None and name not in REDUCED_PRECISION
        }
        if slim_eager is None or not forms:
            lines.append(f"- {slim.label} vs {original.label}: not measured")
            continue
        best = min(forms, key=lambda name: forms[name].median)
        speedup = ratio(forms[best], slim_eager)
        verdict = "beats" if speedup > 1 else "does NOT beat"
        lines.append(
            f"- batch {batch}: {slim.label} in plain eager ({slim_eager.median:.2f} ms) {verdict} "
            f"the best form of {original.label} ({RUNTIMES[best]}, {forms[best].median:.2f} ms): "
            f"{speedup:.2f}x"
        )
    return lines


def write_peers(ctx: BenchContext) -> list[Path]:
    """The peers page: original and slim model in every runtime, same run, with verdicts."""
    cfg = ctx.config
    latency = ctx.measure_latency()
    page = ResultPage(
        "Peers: deeprebirth's slim model vs the original in other runtimes", cfg.settings_line()
    )
    for original, slim in cfg.peer_pairs:
        for batch in cfg.batches:
            timings = {
                f"{spec.label} | {RUNTIMES[name]}": latency[batch].get((spec.label, name))
                for spec in (original, slim)
                for name in cfg.peer_runtimes
            }
            rows = []
            keys = [(spec, name) for spec in (original, slim) for name in cfg.peer_runtimes]
            for (spec, name), base_row in zip(keys, timing_rows(timings), strict=True):
                rt = ctx.runtimes[(spec.label, name)]
                diff = f"{rt.max_abs_diff:.1e}" if rt.max_abs_diff is not None else MISSING
                rows.append([*base_row, diff, f"{rt.build_s:.1f}", rt.note or "-"])
            page.add_table(
                f"{original.label} vs {slim.label}, batch {batch}",
                [
                    "model | runtime",
                    "ms median [min, max]",
                    f"speed-up vs {original.label} eager",
                    "max abs diff vs eager",
                    "build s",
                    "note",
                ],
                rows,
            )
    verdicts = [line for batch in cfg.batches for line in peer_verdicts(ctx, batch)]
    page.add_text(
        "Verdicts (slim eager vs the fastest form of the original):\n\n" + "\n".join(verdicts)
    )
    page.add_text(
        "Slim models come from inexact rules (streamline, branch_slim) and would be finetuned "
        "before use; their accuracy is not measured here (random weights). `max abs diff` "
        "compares each runtime with the same model in eager."
    )
    return [_write(ctx, page, "peers")]


def write_deployed_vs_peers(ctx: BenchContext) -> list[Path]:
    """The "peers" page: each of ``deployed_models`` run by deeprebirth's own operators
    (deployed form) and by every other runtime (portable form: the same weights in standard
    operators), per batch, with ratios against the deployed form in the first of
    ``deployed_runtimes`` (deeprebirth's deployed path) and achieved GFLOP/s against the peak
    of a large convolution timed in the same interleaved rounds."""
    cfg = ctx.config
    latency = ctx.measure_latency()
    page = ResultPage(
        "deeprebirth's deployed path vs every runtime on the same model", cfg.settings_line()
    )
    peaks = {batch: peak_gflops(*ctx.peak[batch]) for batch in cfg.batches}
    best = peak_gflops(*ctx.peak[cfg.batches[0]], best=True)
    page.add_text(
        f"Peak: fp32 3x3 convolution 256->256 channels, 28x28, batch {cfg.peak_conv_batch}, "
        "channels_last (oneDNN), timed as one more variant in the same interleaved rounds as "
        "the runtimes, so the machine's drift moves it and them alike. Its median GFLOP/s in "
        "each batch's rounds: "
        + ", ".join(f"batch {b}: **{peaks[b]:.1f}**" for b in cfg.batches)
        + f" (best round of batch {cfg.batches[0]}: {best:.1f})."
        " The % of peak column is the median over rounds of a runtime's GFLOP/s over the "
        "peak's in the same round."
    )
    base_name = RUNTIMES[cfg.deployed_runtimes[0]]
    for spec in cfg.deployed_models:
        forms = [
            (in_form(spec, "deployed"), cfg.deployed_runtimes),
            (in_form(spec, "portable"), cfg.portable_runtimes),
        ]
        macs = ctx.costs(forms[1][0]).macs
        for batch in cfg.batches:
            base = latency[batch].get((forms[0][0].label, forms[0][1][0]))
            rows = []
            for form_spec, names in forms:
                for name in names:
                    rt = ctx.runtimes[(form_spec.label, name)]
                    timing = latency[batch].get((form_spec.label, name))
                    throughput = MISSING
                    if timing is not None:
                        gflops = achieved_gflops(macs, batch, timing.median)
                        share = share_of_peak(timing, 2 * macs * batch, *ctx.peak[batch])
                        throughput = f"{gflops:.1f} ({100 * share:.0f}%)"
                    rows.append(
                        [
                            form_spec.form,
                            RUNTIMES[name],
                            timing_cell(timing),
                            ratio_cell(ratio(base, timing)),
                            throughput,
                            MISSING if rt.max_abs_diff is None else f"{rt.max_abs_diff:.1e}",
                            rt.note or "-",
                        ]
                    )
            page.add_table(
                f"{spec.label}, batch {batch}",
                [
                    "form",
                    "runtime",
                    "ms median [min, max]",
                    f"speed-up vs deployed {base_name}",
                    "GFLOP/s (% of peak)",
                    "max abs diff vs eager",
                    "note",
                ],
                rows,
                f"speed-up: the median over rounds of the deployed form's {base_name} time / "
                "this one's in the same round (above 1: faster than deeprebirth's own path).",
            )
    page.add_text(
        "Deployed form: the exact rules with deeprebirth's operators (`fold_bn`, "
        "`fuse_conv_pool`, `merge_branches`, `pack_conv`) and `flatten_for_inference`; "
        "TorchScript (frozen) is what the C++ runner runs; TorchScript oneDNN Graph is the same "
        "model made portable, traced, frozen and run by TorchScript's oneDNN Graph fuser "
        "(`deeprebirth.export.to_onednn_graph`, `deeprebirth-run --onednn-graph`). Portable "
        "form: the same model in standard operators (`make_portable`), as exported to ONNX, "
        "ExecuTorch and OpenVINO. GFLOP/s: 2 x the portable model's MACs x batch / median "
        "latency. bf16 rows compute in bf16 (flagged: not a like-for-like fp32 result)."
    )
    return [_write(ctx, page, "deployed_vs_peers")]


def write_runtime_profiles(ctx: BenchContext) -> list[Path]:
    """The "profiles" page: where each runtime spends a forward of each of ``deployed_models``
    (deployed form in eager under ``torch.profiler``, portable form under OpenVINO's counters,
    ONNX Runtime's profiler, ExecuTorch as one program), side by side."""
    return [_write(ctx, runtime_profiles_page(ctx), "runtime_profiles")]


def write_memory(ctx: BenchContext) -> list[Path]:
    """Table 6 analog: storage, parameters, MACs, peak runtime memory per batch, and the largest
    batch within the memory budget."""
    cfg = ctx.config
    budget = cfg.memory_budget_mib * MIB
    page = ResultPage("Table 6 analog: storage, memory, parameters, MACs", cfg.settings_line())
    rows = []
    first_costs = first_peak = None
    for spec in tqdm(cfg.latency_models, desc="peak memory", leave=False):
        costs = ctx.costs(spec)
        peaks = measure_peak_memory(ctx.device_model(spec), cfg.image_size, cfg.batches, ctx.device)
        fits = max_batch_within(budget, costs.weight_bytes, peaks) if len(peaks) > 1 else None
        if first_costs is None:
            first_costs, first_peak = costs, peaks[cfg.batches[0]]
        rows.append(
            [
                spec.label,
                f"{costs.file_bytes / MIB:.1f}",
                ratio_cell(first_costs.file_bytes / costs.file_bytes),
                f"{costs.params / 1e6:.2f}",
                f"{costs.macs / 1e9:.3f}",
                *(f"{peaks[b] / MIB:.1f}" for b in cfg.batches),
                ratio_cell(first_peak / peaks[cfg.batches[0]] if peaks[cfg.batches[0]] else None),
                MISSING if fits is None else str(fits),
            ]
        )
    header = ["model", "storage MiB", "storage reduction", "params (M)", "GMACs / image"]
    header += [f"peak extra MiB, batch {b}" for b in cfg.batches]
    header += [
        f"peak reduction, batch {cfg.batches[0]}",
        f"max batch in {cfg.memory_budget_mib} MiB",
    ]
    page.add_table(
        "storage and runtime memory (eager)",
        header,
        rows,
        "Storage: `torch.save(state_dict)` size. Peak extra memory: the most tensor bytes a "
        "forward holds beyond the weights (activations, workspace, output), from the allocator's "
        "records (`torch.profiler(profile_memory=True)`; CUDA: the caching allocator's peak), "
        "after one warm-up forward. Max batch: weights + peak extra memory modelled linear in "
        "the batch through the measured batches (an estimate). "
        "Reductions are first row / this row. MACs count tensor layers only.",
    )
    return [_write(ctx, page, "table6_memory")]


def write_roofline(ctx: BenchContext) -> list[Path]:
    """Achieved GFLOP/s of each latency model in each runtime against the measured peak GEMM
    throughput and copy bandwidth; ``roofline.png`` shows eager at every batch."""
    cfg = ctx.config
    latency = ctx.measure_latency()
    peak = peak_gemm_gflops(cfg.gemm_size, device=cfg.device)
    bandwidth = peak_copy_gbps(cfg.copy_mib, device=cfg.device)
    page = ResultPage("Roofline: achieved GFLOP/s vs this machine's peak", cfg.settings_line())
    page.add_text(
        f"Measured peak: fp32 GEMM {cfg.gemm_size}x{cfg.gemm_size}: **{peak:.1f} GFLOP/s**; "
        f"copy of {cfg.copy_mib} MiB: **{bandwidth:.1f} GB/s** (best of 5)."
    )
    points = []
    for batch in cfg.batches:
        rows = []
        for spec in cfg.latency_models:
            costs = ctx.costs(spec)
            intensity = arithmetic_intensity(costs, batch)
            roof = attainable_gflops(intensity, peak, bandwidth)
            cells = [spec.label, f"{costs.gflop:.3f}", f"{intensity:.1f}", f"{roof:.1f}"]
            for name in cfg.latency_runtimes:
                timing = latency[batch].get((spec.label, name))
                if timing is None:
                    cells.append(MISSING)
                    continue
                gflops = achieved_gflops(costs.macs, batch, timing.median)
                cells.append(f"{gflops:.1f} ({100 * gflops / peak:.0f}%)")
                if name == "eager":
                    points.append((f"{spec.label}, batch {batch}", intensity, gflops))
            rows.append(cells)
        page.add_table(
            f"batch {batch}",
            ["model", "GFLOP / image", "FLOP / byte", "roofline GFLOP/s"]
            + [f"{RUNTIMES[name]} GFLOP/s (% of peak GEMM)" for name in cfg.latency_runtimes],
            rows,
            "FLOP / byte: 2 x MACs over weight bytes + one write of every layer output "
            "(a lower bound on traffic); roofline = min(peak GEMM, bandwidth x intensity).",
        )
    png = plots.plot_roofline(
        points,
        peak,
        bandwidth,
        f"eager, {cfg.image_size}x{cfg.image_size}",
        cfg.out / "roofline.png",
    )
    page.add_image("roofline", png.name)
    return [_write(ctx, page, "roofline"), png]


def write_summary(ctx: BenchContext) -> list[Path]:
    """``summary.md``: the batch-1 latency table of every runtime and the peer verdicts, the
    part the README quotes."""
    cfg = ctx.config
    latency = ctx.measure_latency()
    batch = cfg.batches[0]
    page = ResultPage("Benchmark summary", cfg.settings_line())
    names = list(dict.fromkeys([*cfg.latency_runtimes, *cfg.peer_runtimes]))
    first = cfg.latency_models[0].label
    labels = list(
        dict.fromkeys(
            [s.label for s in cfg.latency_models]
            + [s.label for pair in cfg.peer_pairs for s in pair]
        )
    )
    rows = []
    for label in labels:
        base = latency[batch].get((first, "eager"))
        cells = [label]
        for name in names:
            timing = latency[batch].get((label, name))
            cells.append(
                MISSING
                if timing is None
                else f"{timing.median:.2f} ({ratio_cell(ratio(base, timing))})"
            )
        rows.append(cells)
    page.add_table(
        f"latency, batch {batch}: ms median (speed-up vs {first} eager)",
        ["model", *(RUNTIMES[n] for n in names)],
        rows,
    )
    page.add_text("\n".join(peer_verdicts(ctx, batch)))
    page.add_image("latency per model and runtime", "latency.png")
    return [_write(ctx, page, "summary")]
