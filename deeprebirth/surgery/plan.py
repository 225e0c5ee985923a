"""What a slimming run finds and changes: :class:`Site` (one place a rule looked at) and :class:`Plan`.

``print(plan)`` is a readable table, :meth:`Plan.to_markdown` the same table for reports and
:meth:`Plan.to_dict` a JSON-ready dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def human(value: float, unit: str = "") -> str:
    """``1234567 -> '1.23M'``; bytes get binary prefixes (``unit='B'``)."""
    base, prefixes = (
        (1024.0, ["", "Ki", "Mi", "Gi"]) if unit == "B" else (1000.0, ["", "K", "M", "G"])
    )
    for prefix in prefixes:
        if abs(value) < base or prefix == prefixes[-1]:
            text = f"{value:.0f}" if prefix == "" else f"{value:.2f}"
            return f"{text}{prefix}{unit}"
        value /= base
    raise AssertionError("unreachable")


@dataclass
class Site:
    """One place a rule matched: the modules involved, whether it applies, and what it costs.

    Attributes:
        rule: the rule's registered name.
        modules: qualified names of the modules involved, bottom to top (``("conv1.conv",
            "conv1.pool")``); the first is the site's anchor.
        exact: whether the rewrite keeps the outputs (up to fp32 rounding).
        applies: False when the rule cannot rewrite this site; ``reason`` says why.
        reason: why the site is skipped, or a short description of the rewrite.
        params_before, params_after: parameters of the replaced modules / their replacements.
        macs_before, macs_after: multiply-accumulates at the plan's input size.
        act_bytes_before, act_bytes_after: bytes of the activations those modules produce.
        details: rule-specific JSON-ready facts (new strides, widths, ranks …).
    """

    rule: str
    modules: tuple[str, ...]
    exact: bool
    applies: bool = True
    reason: str = ""
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    act_bytes_before: int = 0
    act_bytes_after: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        record = asdict(self)
        record["modules"] = list(self.modules)
        return record


@dataclass
class Totals:
    """Whole-model counts at the plan's input size."""

    params: int
    macs: int
    act_bytes: int


@dataclass
class Plan:
    """Every site each rule looked at, in the order the rules run, plus whole-model totals.

    Attributes:
        rules: rule names in the order they run (structural, inexact rules first).
        sites: one :class:`Site` per match, applied or skipped.
        input_shape: shape of the example input the plan was made for.
        options: the slimming options (init, reduce_factor …) the plan was made with.
        traced: False when torch.fx could not trace the model and known block types were walked.
        notes: warnings gathered while planning (fallbacks, conflicts).
        before, after: whole-model totals of the original and of the slimmed model.
        model_name: class name of the planned model.
    """

    rules: list[str]
    sites: list[Site]
    input_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    traced: bool = True
    notes: list[str] = field(default_factory=list)
    before: Totals | None = None
    after: Totals | None = None
    model_name: str = ""

    @property
    def applied(self) -> list[Site]:
        """Sites that are (or will be) rewritten."""
        return [s for s in self.sites if s.applies]

    @property
    def skipped(self) -> list[Site]:
        """Sites a rule matched but could not rewrite (``reason`` says why)."""
        return [s for s in self.sites if not s.applies]

    @property
    def exact(self) -> bool:
        """True when every applied site is exact (outputs must then match to fp32 rounding)."""
        return all(s.exact for s in self.applied)

    def __len__(self) -> int:
        return len(self.sites)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: rules, options, input shape, notes, totals and every site."""
        return {
            "model": self.model_name,
            "rules": list(self.rules),
            "input_shape": list(self.input_shape),
            "options": dict(self.options),
            "traced": self.traced,
            "notes": list(self.notes),
            "before": asdict(self.before) if self.before else None,
            "after": asdict(self.after) if self.after else None,
            "sites": [s.to_dict() for s in self.sites],
        }

    def _rows(self) -> list[list[str]]:
        rows = []
        for site in self.sites:
            status = "apply" if site.applies else "skip"
            costs = (
                [
                    f"{human(site.params_before)}->{human(site.params_after)}",
                    f"{human(site.macs_before)}->{human(site.macs_after)}",
                    f"{human(site.act_bytes_before, 'B')}->{human(site.act_bytes_after, 'B')}",
                ]
                if site.applies
                else ["", "", ""]
            )
            rows.append(
                [site.rule, "yes" if site.exact else "no", status, " + ".join(site.modules)]
                + costs
                + [site.reason]
            )
        return rows

    _HEADER = ["rule", "exact", "status", "modules", "params", "MACs", "activations", "note"]

    def summary(self) -> str:
        """One paragraph: model, rules, input, tracing, counts and totals before -> after."""
        how = "torch.fx trace" if self.traced else "walk of known block types (fx failed)"
        lines = [
            f"Plan for {self.model_name or 'model'}: rules {', '.join(self.rules) or '(none)'}; "
            f"input {tuple(self.input_shape)}; found by {how}; "
            f"{len(self.applied)} sites apply, {len(self.skipped)} skipped; "
            f"{'exact' if self.exact else 'NOT exact (finetune)'}"
        ]
        if self.before and self.after:
            b, a = self.before, self.after
            lines.append(
                f"model totals: params {human(b.params)} -> {human(a.params)}, "
                f"MACs {human(b.macs)} -> {human(a.macs)}, "
                f"activations {human(b.act_bytes, 'B')} -> {human(a.act_bytes, 'B')}"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        rows = [self._HEADER] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADER) - 1)]
        text = []
        for i, row in enumerate(rows):
            cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
            text.append("  ".join(cells).rstrip())
            if i == 0:
                text.append("-" * len(text[0]))
        return self.summary() + "\n" + "\n".join(text)

    def to_markdown(self) -> str:
        """The plan as a Markdown report: summary lines and a table of sites."""
        lines = [f"- {line}" for line in self.summary().splitlines()] + [""]
        lines.append("| " + " | ".join(self._HEADER) + " |")
        lines.append("|" + "---|" * len(self._HEADER))
        for row in self._rows():
            lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
        return "\n".join(lines) + "\n"
