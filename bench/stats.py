"""Pure statistics and table formatting for the benchmarks (no I/O, unit-tested)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """Median and tails of one series of measurements."""

    n: int
    median: float
    p90: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise ``values`` (NaNs everywhere if empty)."""
        return cls(
            n=len(values),
            median=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            minimum=min(values) if values else math.nan,
            maximum=max(values) if values else math.nan,
        )


def ratio(ours: float, baseline: float) -> float:
    """``ours / baseline``; NaN when the baseline is zero or missing."""
    if not baseline or math.isnan(baseline) or math.isnan(ours):
        return math.nan
    return ours / baseline


def fmt(value: float, digits: int = 2) -> str:
    """A number for a table: ``-`` for NaN, thousands separators for big ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


@dataclasses.dataclass
class Table:
    """One result table: a title, column names, rows of cells, notes under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, *cells: object) -> None:
        """Append a row; floats are formatted with ``fmt``."""
        self.rows.append([fmt(c) if isinstance(c, float) else str(c) for c in cells])

    def markdown(self) -> str:
        """The table as GitHub markdown, title first, notes after."""
        lines = [f"#### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def summary_row(label: str, s: Summary, scale: float = 1.0) -> list[object]:
    """Cells ``label, n, median, p90, p99, max`` with values multiplied by ``scale``."""
    return [label, s.n, s.median * scale, s.p90 * scale, s.p99 * scale, s.maximum * scale]


SUMMARY_COLUMNS = ["path", "n", "median", "p90", "p99", "max"]


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """A target and whether this run met it, with what limits it when not."""

    target: str
    met: bool | None  # None: not run, or no target (``info``)
    measured: str
    limit: str = ""
    #: A figure recorded without a target.
    info: bool = False

    def line(self) -> str:
        """``MET``/``NOT MET``/``NOT RUN``/``INFO`` line for the report."""
        word = "NOT RUN" if self.met is None else ("MET" if self.met else "NOT MET")
        if self.info:
            word = "INFO"
        tail = f" — {self.limit}" if self.limit else ""
        return f"**{word}**: {self.target} (measured: {self.measured}){tail}"


@dataclasses.dataclass
class Outcome:
    """What one benchmark produced."""

    number: int
    name: str
    command: str
    tables: list[Table] = dataclasses.field(default_factory=list)
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: Figures another benchmark's target refers to (``sdk_jobs_per_s_c2``, ``drain_per_s``).
    figures: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def store_label(self) -> str:
        """The store it ran on: the name's last parenthesised word (``sqlite``)."""
        return self.name.rsplit("(", 1)[-1].rstrip(")") if "(" in self.name else ""

    def markdown(self) -> str:
        """The benchmark's section of the report."""
        out = [f"### {self.number}. {self.name}", "", f"Reproduce: `{self.command}`", ""]
        out += [t.markdown() for t in self.tables]
        if self.verdicts:
            out += [f"- {v.line()}" for v in self.verdicts]
            out.append("")
        out += [f"{n}\n" for n in self.notes]
        return "\n".join(out)
