"""Package-level behaviour: build facts, the bvlc_googlenet model, the torchvision shim, the CLI."""

from __future__ import annotations

import torch
from torch import nn

import deeprebirth
from deeprebirth.models import bvlc_googlenet


def test_build_info_reports_the_build():
    info = deeprebirth.build_info()
    assert info["version"] == deeprebirth.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["with_cuda"] in (True, False)
    assert info["num_threads"] == torch.get_num_threads()
    assert info["parallel_backend"] in ("OpenMP", "native thread pool", "unknown")


def test_kernels_run_on_torchs_intra_op_threads():
    """Compiled without OpenMP, at::parallel_for (a header template) runs every kernel loop on the
    calling thread while torch itself uses OpenMP: the kernels silently lose their threads."""
    torch_backend = torch.__config__.parallel_info()
    if "parallel backend: OpenMP" in torch_backend or "native thread pool" in torch_backend:
        assert deeprebirth.build_info()["parallel_kernels"]


def test_bvlc_googlenet_layout_matches_caffe():
    model = bvlc_googlenet()
    names = [name for name, _ in model.named_children()]
    assert names[:4] == ["conv1", "conv2", "inception_3a", "inception_3b"]
    assert model.conv1.conv.stride == (2, 2) and model.conv1.conv.kernel_size == (7, 7)
    assert isinstance(model.conv1.norm, nn.LocalResponseNorm)
    assert model.inception_3a.out_channels == 256 and model.inception_5b.out_channels == 1024
    # Caffe's bvlc_googlenet without auxiliary heads has 6.998M parameters.
    assert sum(p.numel() for p in model.parameters()) == 6_998_552


def test_bvlc_googlenet_any_width_and_size_runs():
    model = bvlc_googlenet(num_classes=10, width=0.25, lrn=False, in_channels=1).eval()
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 48)).shape == (2, 10)


def test_torchvision_imports_and_builds_models():
    from deeprebirth.compat.torchvision import import_torchvision

    with _ignore_shim_warning():
        tv = import_torchvision()
    for name in ("googlenet", "resnet50"):
        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = getattr(tv.models, name)(weights=None, **kwargs).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def _ignore_shim_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield

    return ctx()


def test_cli_info_and_check_ops_run(capsys):
    from deeprebirth.cli import main

    assert main(["info"]) == 0
    assert '"version"' in capsys.readouterr().out
    assert main(["check-ops", "--image-size", "96", "--width", "0.25", "--repeats", "1"]) == 0
    assert "all operators match" in capsys.readouterr().out
