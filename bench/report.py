"""The markdown report: a run's sections, merged into an existing report.

A run of some benchmarks (``--only 1,3``) replaces those benchmarks' sections of the file and
keeps every other section, its target lines and the hand-written findings as they were; each
section says which run it comes from (date, command, machine load), so a report assembled from
several runs stays honest about it.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

from .stats import Outcome

TITLE = "# DeepExec benchmark results"
_SECTION = re.compile(r"^### (\d+)\. ", re.MULTILINE)
_TARGET = re.compile(r"^- \[(\d+)\] ")
_FINDINGS = "\n## Findings"


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """Where and how a run happened, written at the top of each of its sections."""

    when: str
    command: str
    machine: str
    quick: bool

    def line(self) -> str:
        quick = " (QUICK: figures not meaningful)" if self.quick else ""
        return f"Run: {self.when}, `{self.command}`{quick}. Machine: {self.machine}."


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """An existing report cut into what a merge keeps or replaces."""

    targets: dict[int, list[str]]
    sections: dict[int, str]
    findings: str


def parse(text: str) -> Parsed:
    """Cut ``text`` (a report this module wrote) into targets, sections and findings."""
    body, sep, findings = text.partition(_FINDINGS)
    findings = (sep + findings).strip("\n") if sep else ""
    targets: dict[int, list[str]] = {}
    head, _, tables = body.partition("\n## Tables\n")
    for line in head.splitlines():
        m = _TARGET.match(line)
        if m:
            targets.setdefault(int(m.group(1)), []).append(line)
    # A report from before sections carried their run: its header's run line goes to each.
    legacy = " ".join(line for line in head.splitlines() if line.startswith(("Run: ", "Machine: ")))
    sections: dict[int, str] = {}
    starts = [m.start() for m in _SECTION.finditer(tables)] + [len(tables)]
    for start, end in itertools.pairwise(starts):
        chunk = tables[start:end].strip("\n")
        if legacy and "\nRun: " not in chunk:
            heading, _, rest = chunk.partition("\n")
            chunk = f"{heading}\n\n{legacy}\n{rest}"
        number = int(_SECTION.match(chunk).group(1))  # type: ignore[union-attr]
        sections[number] = (sections[number] + "\n\n" + chunk) if number in sections else chunk
    return Parsed(targets, sections, findings)


def render(outcomes: list[Outcome], run: Run, previous: str | None = None) -> str:
    """The whole report: this run's outcomes, plus what ``previous`` holds of the others."""
    old = parse(previous) if previous else Parsed({}, {}, "")
    ran = {o.number for o in outcomes}
    targets = {n: lines for n, lines in old.targets.items() if n not in ran}
    sections = {n: text for n, text in old.sections.items() if n not in ran}
    for o in outcomes:
        targets.setdefault(o.number, []).extend(f"- [{o.number}] {v.line()}" for v in o.verdicts)
        text = _with_run_line(o.markdown().strip("\n"), run)
        sections[o.number] = (sections[o.number] + "\n\n" + text) if o.number in sections else text
    lines = [
        TITLE,
        "",
        "Each section names the run it comes from; `python -m bench --only N --results "
        "bench/RESULTS.md` replaces benchmark N's sections and keeps the rest.",
        "",
        "## Targets",
        "",
    ]
    lines += [line for n in sorted(targets) for line in targets[n]]
    lines += ["", "## Tables", ""]
    lines += [sections[n] + "\n" for n in sorted(sections)]
    if old.findings:
        lines += [old.findings, ""]
    return "\n".join(lines)


def _with_run_line(section: str, run: Run) -> str:
    """The section with ``run``'s line under its heading (each heading of a multi-part one)."""
    out: list[str] = []
    for line in section.splitlines():
        out.append(line)
        if _SECTION.match(line):
            out += ["", run.line()]
    return "\n".join(out)
