"""Fashion-MNIST from the Debian package's IDX files, and the synthetic set."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from deeprebirth.train.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_ROOT,
    FASHION_MNIST_STD,
    DataError,
    FashionMNIST,
    read_idx,
    synthetic_dataset,
)

ROOT = Path(FASHION_MNIST_ROOT)
needs_files = pytest.mark.skipif(
    not (ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian fashion-mnist package not installed",
)


@needs_files
def test_reads_the_real_test_split():
    labels = read_idx(ROOT / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(ROOT / "t10k-images-idx3-ubyte.gz")
    assert labels.shape == (10000,) and images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10  # Fashion-MNIST's test split is balanced


@needs_files
@pytest.mark.parametrize(("fit", "size", "channels"), [("pad", 32, 1), ("resize", 40, 3)])
def test_samples_are_normalised_images_of_the_model_size(fit, size, channels):
    data = FashionMNIST(ROOT, "test", size, channels, augment=False, limit=4, fit=fit)
    raw = read_idx(ROOT / "t10k-images-idx3-ubyte.gz")[:4]
    assert len(data) == 4
    for i in range(4):
        image, label = data[i]
        assert image.shape == (channels, size, size) and 0 <= label < 10
        assert torch.equal(image[0], image[-1])
        pixels = image[0] * FASHION_MNIST_STD + FASHION_MNIST_MEAN
        if fit == "pad":  # the 28x28 original sits in the centre, unchanged
            assert torch.allclose(
                pixels[2:30, 2:30], torch.from_numpy(raw[i].copy()).float() / 255, atol=1e-5
            )
            assert pixels[:2].abs().max() < 1e-5
        else:
            assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="IDX file not found"):
        read_idx(tmp_path / "missing.gz")
    bad = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")  # says 5 values, has 2
    with pytest.raises(DataError, match=r"bad-idx1-ubyte\.gz: expected 5 values"):
        read_idx(bad)


def test_synthetic_is_deterministic_and_labelled():
    a, b = synthetic_dataset(20, 3, 1, 32, seed=1), synthetic_dataset(20, 3, 1, 32, seed=1)
    assert torch.equal(a.tensors[0], b.tensors[0]) and a.tensors[0].shape == (20, 1, 32, 32)
    assert set(a.tensors[1].tolist()) <= {0, 1, 2}
