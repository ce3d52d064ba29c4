"""The benchmark suite does not rot: its smoke run works end to end against a real server and
sandbox, and the pure parts that turn measurements into tables and verdicts are right.

No speed is asserted here: speed is measured (and judged) by ``python -m bench``.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import parse_only
from bench.b5_backlog import finished_completed
from bench.diagnose import http_limit
from bench.load import parse_wrk
from bench.profile import categorise, parse_collapsed, summarise
from bench.report import Run, parse, render
from bench.stats import Outcome, Summary, Table, Verdict, percentile, ratio

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_quick_run_of_benchmarks_1_and_3_prints_their_tables(tmp_path: Path) -> None:
    report = tmp_path / "results.md"
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "1,3", "--results", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=85,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "#### Latency of one `print(1)` (ms)" in out
    assert "| SDK submit→wait (deepexec serve) | 6 |" in out
    assert "| bare /usr/bin/python3 -c | 6 |" in out
    assert "| right after another sandbox run | 2 |" in out
    assert "#### From the job's finished_at to the wait's return (ms)" in out
    assert "Reproduce: `.venv/bin/python -m bench --only 1 --quick`" in out
    assert "(FAILED)" not in out
    text = report.read_text()
    assert text.startswith("# DeepExec benchmark results")
    assert "nproc" in text and "QUICK" in text
    # Every target of 1 and 3 got a verdict.
    assert text.count("- [1] **") == 3 and text.count("- [3] **") == 1


def test_percentiles_interpolate_and_summaries_order() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert math.isnan(percentile([], 50))
    s = Summary.of([float(x) for x in range(1, 101)])
    assert (s.n, s.median, s.minimum, s.maximum) == (100, 50.5, 1.0, 100.0)
    assert s.median <= s.p90 <= s.p99 <= s.maximum


def test_ratio_of_nothing_is_nan_not_an_error() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_table_and_verdict_render_markdown() -> None:
    t = Table("T", ["a", "b"])
    t.add("x", 1234.5)
    t.add("y", math.nan)
    assert "| x | 1,234 |" in t.markdown() and "| y | - |" in t.markdown()
    assert Verdict("t", True, "1").line().startswith("**MET**")
    assert Verdict("t", False, "1", "why").line().endswith("— why")
    assert Verdict("t", None, "-").line().startswith("**NOT RUN**")
    assert Verdict("t", None, "1", info=True).line().startswith("**INFO**")


def test_parse_only_picks_known_numbers_and_names_unknown_ones() -> None:
    assert parse_only(None, [1, 2, 3]) == [1, 2, 3]
    assert parse_only(None, [1, 16, 17]) == [1, 16]  # the 30-minute soak only when named
    assert parse_only("17", [1, 16, 17]) == [17]
    assert parse_only("3,1", [1, 2, 3]) == [3, 1]
    with pytest.raises(ValueError, match=r"\[7\]"):
        parse_only("1,7", [1, 2, 3])


def test_wrk_output_is_read() -> None:
    text = """Running 5s test @ http://127.0.0.1:1/v1/jobs/x
  Latency Distribution
     50%  740.00us
     90%    2.10ms
     99%    1.20s
  10000 requests in 5.00s, 5.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:   2000.50
"""
    r = parse_wrk(text)
    assert r.rps == 2000.5
    assert r.p50_ms == pytest.approx(0.74)
    assert (r.p90_ms, r.p99_ms) == (2.1, 1200.0)
    assert r.errors == 6


def test_completed_count_is_read_from_metrics() -> None:
    text = (
        '# HELP x\ndeepexec_jobs_finished_total{job_type="code_execution",status="COMPLETED"} '
        '41.0\ndeepexec_jobs_finished_total{job_type="code_execution",status="FAILED"} 2.0\n'
        'deepexec_jobs_finished_total{job_type="text_generation",status="COMPLETED"} 1.0\n'
    )
    assert finished_completed(text) == 42


def test_profile_samples_go_to_the_leaf_most_subsystem() -> None:
    stacks = parse_collapsed(
        [
            "run (uvicorn/server.py:1);get_job (deepexec_server/store/sqlite.py:9);"
            "execute (sqlite3/dbapi2.py:3) 7",
            "run (uvicorn/server.py:1);auth (deepexec_server/auth.py:2);sha256 (hashlib.py:1) 2",
            "main (x.py:1) 1",
            "garbage",
        ]
    )
    assert [n for _, n in stacks] == [7, 2, 1]
    assert categorise(stacks[0][0]) == "store (SQL)"
    assert categorise(stacks[1][0]) == "auth (key check)"
    assert categorise(stacks[2][0]) == "other"
    by_cat, _ = summarise(stacks)
    assert by_cat.rows[0][:2] == ["store (SQL)", "7"]


def test_a_slow_healthz_is_reported_as_a_tcp_stall() -> None:
    assert "TCP stall" in http_limit(44.0, "app work")
    assert http_limit(2.0, "app work") == "app work"


def _outcome(number: int, name: str, met: bool, figure: str) -> Outcome:
    out = Outcome(number, name, f"python -m bench --only {number}")
    out.tables.append(Table("A table", ["what", "value"], [["x", figure]]))
    out.verdicts.append(Verdict(f"target {number}", met, figure))
    return out


def test_a_partial_run_replaces_its_sections_and_keeps_the_others() -> None:
    first = Run("2026-01-01 00:00 UTC", "python -m bench", "nproc 2", quick=False)
    outcomes = [_outcome(1, "one", True, "1.0"), _outcome(2, "two", False, "2.0")]
    outcomes += [_outcome(8, "eight (a)", True, "8a"), _outcome(8, "eight (b)", True, "8b")]
    full = render(outcomes, first)
    full += "\n## Findings (written by hand)\n\nKept as written.\n"
    second = Run("2026-01-02 00:00 UTC", "python -m bench --only 2", "nproc 2", quick=False)
    merged = render([_outcome(2, "two", True, "2.5")], second, full)
    parsed = parse(merged)
    assert sorted(parsed.sections) == [1, 2, 8]
    assert "2.5" in parsed.sections[2] and "2.0" not in merged
    assert "2026-01-02" in parsed.sections[2] and "2026-01-01" in parsed.sections[1]
    assert parsed.sections[8].count("### 8.") == 2 and "8b" in parsed.sections[8]
    assert parsed.targets[1] == ["- [1] **MET**: target 1 (measured: 1.0)"]
    assert parsed.targets[2] == ["- [2] **MET**: target 2 (measured: 2.5)"]
    assert parsed.findings.endswith("Kept as written.")
    # Merging again with the same run changes nothing.
    assert render([_outcome(2, "two", True, "2.5")], second, merged) == merged
