"""Operator micro-benchmarks: deeprebirth's kernels against the ATen sequences they replace.

- :mod:`~deeprebirth.bench.ops.conv_pool`: fused ``conv_pool`` vs conv -> ReLU -> max-pool.
- :mod:`~deeprebirth.bench.ops.branch_conv`: ``branch_conv`` vs separate convs + ReLU + cat.
- :mod:`~deeprebirth.bench.ops.fused`: both of the above in one process.
- :mod:`~deeprebirth.bench.ops.direct_conv`: ``direct_conv`` vs conv2d and im2col, per layer.

Each module has a ``main(argv)``; ``scripts/bench_<name>.py`` (``bench_ops.py`` for ``fused``)
runs it. Nothing is imported here: the modules load torch and the compiled ops.
"""
