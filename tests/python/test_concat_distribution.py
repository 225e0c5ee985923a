"""distribute_concatenations: exact against the unmodified model, the same multiply-adds, the
documented memory rule on both sides of its boundary, and no rewrite where a reader forbids it."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deeprebirth.export import concat
from deeprebirth.export.concat import distribute_concatenations
from deeprebirth.export.pt2 import dynamic_batch, export_program

aten = torch.ops.aten


class Branches(nn.Module):
    """Two branches concatenated along channels, then ``reader``."""

    def __init__(self, reader: nn.Module, widths: tuple[int, ...] = (6, 10)) -> None:
        super().__init__()
        kernels = (1, 3, 5, 1)[: len(widths)]
        self.branches = nn.ModuleList(
            nn.Conv2d(3, w, k, padding=k // 2) for w, k in zip(widths, kernels, strict=True)
        )
        self.reader = reader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reader(torch.cat([torch.relu(b(x)) for b in self.branches], 1))


READERS = {
    "conv 3x3 stride 2 dilated": lambda c: nn.Conv2d(c, 2, 3, stride=2, padding=2, dilation=2),
    "conv 1x1 no bias": lambda c: nn.Conv2d(c, 3, 1, bias=False),
    "max pool, conv": lambda c: nn.Sequential(
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(c, 2, 1)
    ),
    "relu, avg pool, conv": lambda c: nn.Sequential(
        nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(c, 2, 3, padding=1)
    ),
    "global pool, flatten, dropout, linear": lambda c: nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(c, 3)
    ),
}


def _cats(program: torch.export.ExportedProgram) -> int:
    return sum(n.target is aten.cat.default for n in program.graph.nodes)


def _flops(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("reader", sorted(READERS))
def test_distributed_program_equals_the_model(reader: str) -> None:
    torch.manual_seed(0)
    model = Branches(READERS[reader](16)).eval()
    program = export_program(model, torch.randn(1, 3, 9, 9))
    assert _cats(program) == 1
    distributed = distribute_concatenations(program, dynamic_shapes=dynamic_batch())
    assert _cats(distributed) == 0
    x = torch.randn(3, 3, 9, 9)  # another batch size: the dynamic batch survives the re-export
    with torch.no_grad():
        expected = model(x)
        got = distributed.module()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # each reader convolves each branch with a slice of its weights: the same multiply-adds
    assert _flops(distributed.module(), x) == _flops(model, x)


class BufferWeight(Branches):
    """The reader's weight is a buffer (a frozen constant), not a parameter."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())
        self.register_buffer("weight", torch.randn(2, 16, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(b(x)) for b in self.branches], 1)
        return torch.nn.functional.conv2d(y, self.weight, padding=1)


def test_weight_held_as_a_buffer_is_split_too() -> None:
    torch.manual_seed(0)
    model = BufferWeight().eval()
    program = export_program(model, torch.randn(1, 3, 9, 9))
    distributed = distribute_concatenations(program, dynamic_shapes=dynamic_batch())
    assert _cats(distributed) == 0
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(distributed.module()(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("outputs, distributed", [(5, True), (6, False)])
def test_memory_rule_boundary(outputs: int, distributed: bool) -> None:
    """Branches of 4 + 4 channels read by one 1x1 convolution of ``outputs`` channels: the sum
    adds 3 * outputs element accesses per pixel, the concatenation cost 2 * 8 = 16."""
    model = Branches(nn.Conv2d(8, outputs, 1), widths=(4, 4)).eval()
    program = export_program(model, torch.randn(1, 3, 6, 6))
    result = distribute_concatenations(program, dynamic_shapes=dynamic_batch())
    assert _cats(result) == (0 if distributed else 1)
    assert (result is program) is not distributed


class Grouped(Branches):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(16, 4, 1, groups=2))


class ReadTwice(Branches):
    """One reader may be split, the other (an addition) may not."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(b(x)) for b in self.branches], 1)
        return self.reader(y) + y.sum(1, keepdim=True)


class Output(Branches):
    def __init__(self) -> None:
        super().__init__(nn.Identity())


class InPlace(Branches):
    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(16, 1, 1)))


@pytest.mark.parametrize("model_type", [Grouped, ReadTwice, Output, InPlace])
def test_concatenation_kept_when_a_reader_needs_it(model_type: type[nn.Module]) -> None:
    program = export_program(model_type().eval(), torch.randn(1, 3, 6, 6))
    assert distribute_concatenations(program, dynamic_shapes=dynamic_batch()) is program


def test_docstring_example() -> None:
    result = doctest.testmod(concat)
    assert result.failed == 0 and result.attempted > 0
