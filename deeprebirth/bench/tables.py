"""Markdown result pages: tables with a machine line, timing cells and ratio columns.

Every table a :class:`ResultPage` renders starts with the machine line (CPU, cores, torch,
threads), so a table copied anywhere still says where it was measured. Latency cells read
``median [min, max]`` in milliseconds; ratios are the baseline's time over this one (above 1:
faster than the baseline), the baseline being the first entry: the median of the per-round ratios
for two timings from the same interleaved rounds, else the ratio of the medians.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deeprebirth.bench.timing import Timing, speed_ratio

MISSING = "n/a"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; ``|`` inside cells is escaped.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, "x|y"]]))
        | a | b |
        |---|---|
        | 1 | x\\|y |
    """

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def timing_cell(timing: Timing | None) -> str:
    """``"12.34 [12.01, 13.50]"`` (ms, median [min, max]), or ``n/a``."""
    if timing is None:
        return MISSING
    return f"{timing.median:.2f} [{timing.min:.2f}, {timing.max:.2f}]"


def ratio(baseline: Timing | None, timing: Timing | None) -> float | None:
    """:func:`~deeprebirth.bench.timing.speed_ratio` of the two (per-round ratios when both were
    timed in the same interleaved rounds), or None when either is missing."""
    if baseline is None or timing is None or timing.median <= 0:
        return None
    return speed_ratio(baseline, timing)


def ratio_cell(value: float | None) -> str:
    """``"1.85x"`` or ``n/a``."""
    return MISSING if value is None else f"{value:.2f}x"


def timing_rows(timings: Mapping[str, Timing | None]) -> list[list[str]]:
    """Rows ``[label, median [min, max], ratio]`` with ratios against the first entry.

    Example:
        >>> rows = timing_rows({"a": Timing((4.0, 4.0)), "b": Timing((2.0, 2.0))})
        >>> rows[1]
        ['b', '2.00 [2.00, 2.00]', '2.00x']
    """
    baseline = next(iter(timings.values()), None)
    return [[label, timing_cell(t), ratio_cell(ratio(baseline, t))] for label, t in timings.items()]


@dataclass
class ResultPage:
    """A Markdown results file: title, settings line, then tables and text in order.

    Example:
        >>> page = ResultPage("Table 1", "input 224x224")
        >>> page.add_table("batch 1", ["model", "share"], [["AlexNet", "12%"]])
        >>> "| AlexNet | 12% |" in page.render("machine X", "cmd")
        True
    """

    title: str
    settings: str
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)

    def add_text(self, text: str) -> None:
        """A paragraph (Markdown) after what is already on the page."""
        self.blocks.append(("text", text))

    def add_table(
        self, heading: str, header: Sequence[str], rows: Sequence[Sequence[object]], note: str = ""
    ) -> None:
        """A ``###`` heading, the machine line, the table and an optional note under it."""
        table = markdown_table(header, rows) + (f"\n\n{note}" if note else "")
        self.blocks.append((heading, table))

    def add_image(self, alt: str, filename: str) -> None:
        """An image next to the page (a PNG in the same folder)."""
        self.blocks.append(("text", f"![{alt}]({filename})"))

    def render(self, machine: str, command: str) -> str:
        """The page as Markdown, dated; ``machine`` heads every table, ``command`` reproduces it."""
        lines = [f"# {self.title}", "", f"Measured: {datetime.date.today().isoformat()}", ""]
        lines += [f"Machine: {machine}", "", f"Settings: {self.settings}", ""]
        lines += [f"Reproduce: `{command}`", ""]
        for kind, text in self.blocks:
            if kind != "text":
                lines += [f"### {kind}", "", f"_Machine: {machine}_", ""]
            lines += [text, ""]
        return "\n".join(lines)

    def write(self, path: Path, machine: str, command: str) -> Path:
        """Writes :meth:`render` to ``path`` (folders created); returns the path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(machine, command))
        return path
