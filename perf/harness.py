"""Repeat a measurement after a warm-up, summarise it, compare it with its reference, print a table.

Two halves. Inside a role process, :func:`timed_rounds` runs a measuring function ``warmup`` times
without keeping the result, then ``repeat`` times keeping each. In the parent, :class:`Row` holds
the samples of the remus side and of the reference side of one benchmark, their medians and
spread, the ratio remus/reference, and the goal the ratio (or the value) must meet;
:func:`render` prints all rows as one table and :func:`to_json` keeps every sample.
"""

from __future__ import annotations

import math
import operator
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


def timed_rounds(fn: Callable[[], Any], *, warmup: int, repeat: int) -> list[Any]:
    """Call ``fn`` ``warmup`` times (results dropped), then ``repeat`` times; return those."""
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeat)]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stat:
    """Median and spread (min-max) of the repeated samples of one side of a benchmark."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float] | float) -> Stat:
        if isinstance(samples, (int, float)):
            samples = [samples]
        return cls(tuple(float(s) for s in samples))

    @property
    def median(self) -> float:
        return percentile(self.samples, 50)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)


@dataclass(frozen=True)
class Goal:
    """``ratio >= 0.6``, ``ratio <= 1.5``, or on the raw value (``value <= 5``)."""

    op: str  # ">=" or "<="
    limit: float
    on: str = "ratio"  # "ratio" or "value"

    def check(self, ratio: float | None, value: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None or math.isnan(subject):
            return None
        compare = operator.ge if self.op == ">=" else operator.le
        return bool(compare(subject, self.limit))

    def __str__(self) -> str:
        subject = "x" if self.on == "ratio" else ""
        return f"{self.op} {_num(self.limit)}{subject}"


@dataclass
class Row:
    """One line of the table: a benchmark, both sides, their ratio, and the goal."""

    name: str
    unit: str
    remus: Stat | None = None
    reference: Stat | None = None
    goal: Goal | None = None
    ref_label: str = ""  # what the reference is, when it is not the usual one
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.remus is None or self.reference is None or self.reference.median == 0:
            return None
        return self.remus.median / self.reference.median

    @property
    def ok(self) -> bool | None:
        if self.goal is None:
            return None
        value = self.remus.median if self.remus is not None else None
        return self.goal.check(self.ratio, value)


def _num(x: float) -> str:
    """Short human number: 18400 -> 18.4k, 0.523 -> 0.523, 1234567 -> 1.23M."""
    if math.isnan(x):
        return "nan"
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.3g}M"
    if ax >= 1e4:
        return f"{x / 1e3:.3g}k"
    if ax >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def _cell(stat: Stat | None, unit: str) -> str:
    if stat is None:
        return "n/a"
    text = f"{_num(stat.median)} {unit}".strip()
    if len(stat.samples) > 1:
        text += f" [{_num(stat.lo)}-{_num(stat.hi)}]"
    return text


def _goal(row: Row) -> str:
    if row.goal is None:
        return "—"
    unit = f" {row.unit}" if row.goal.on == "value" and row.unit else ""
    return f"{row.goal}{unit}"


def render(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """One table: benchmark | remus | reference | ratio | goal | ok?, then numbered notes."""
    head = ("benchmark", "remus", "reference", "ratio", "goal", "ok?")
    body = []
    for row in rows:
        ref = _cell(row.reference, row.unit)
        if row.ref_label and row.reference is not None:
            ref += f" ({row.ref_label})"
        ratio = row.ratio
        ok = {True: "ok", False: "MISS", None: "—" if row.goal is None else "?"}[row.ok]
        body.append(
            (
                row.name,
                _cell(row.remus, row.unit),
                ref,
                "—" if ratio is None else f"{ratio:.2f}x",
                _goal(row),
                ok,
            )
        )
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in body]
    all_notes = [*notes, *(f"{r.name}: {r.note}" for r in rows if r.note)]
    out += [""] * bool(all_notes) + [f"- {n}" for n in all_notes]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """Where and when the table was measured."""
    import zmq

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }


def to_json(rows: Sequence[Row], **extra: Any) -> dict[str, Any]:
    """Every row with all its samples, for keeping next to the printed table."""

    def side(stat: Stat | None) -> dict[str, Any] | None:
        if stat is None:
            return None
        return {"median": stat.median, "min": stat.lo, "max": stat.hi, "samples": stat.samples}

    return {
        "machine": machine(),
        **extra,
        "rows": [
            {
                "benchmark": r.name,
                "unit": r.unit,
                "remus": side(r.remus),
                "reference": side(r.reference),
                "reference_label": r.ref_label,
                "ratio": r.ratio,
                "goal": str(r.goal) if r.goal else None,
                "ok": r.ok,
                "note": r.note,
                **r.meta,
            }
            for r in rows
        ],
    }
