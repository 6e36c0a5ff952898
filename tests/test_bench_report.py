"""bench/report.py: the README's headline table and docs/benchmarks.md are what the committed
results say, and goals are judged as written.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def report():
    """bench/report.py, loaded from its path: it imports nothing from bench/, so sys.path stays as is."""
    spec = importlib.util.spec_from_file_location("report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_tables_are_up_to_date(report):
    for path, block in report.tables(report.load()).items():
        text = path.read_text(encoding="utf-8")
        assert report.splice(text, block) == text, f"{path.name} is out of date: run python bench/report.py"


def test_every_result_row_is_in_the_full_table(report):
    results = report.load()
    full = report.render_full(results)
    for result in results:
        for row in result["rows"]:
            assert f"| {row['metric']} | {row['value']:g} {row['unit']}".rstrip() in full, row


def test_the_headline_has_at_most_ten_rows_each_with_a_goal_and_a_verdict_column(report):
    lines = report.render_headline(report.load()).splitlines()
    assert lines[0] == "| what | measured | goal | verdict |"
    assert 1 <= len(lines) - 2 <= 10
    assert all(line.count("|") == 5 for line in lines)


@pytest.mark.parametrize("goal, value, unit, met", [
    ("<= 20 MB", 4.9, "MB", True),
    ("<= 20 MB", 21, "MB", False),
    ("< 300 s", 300, "s", False),
    ("≤ 1000 ms (RFC 6762 probing: 0–250 + 3 × 250 ms)", 885.5, "ms", True),
    ("> 1", 1.98, "x", True),
    ("0", 0, "", True),
    ("0", 1, "", False),
    ("<= 5 ms or <= 5%", 5.76, "ms", False),
    ("<= 5 ms or <= 5%", 4.2, "%", True),
    (">= 0.9x sha256sum", 873.1, "MB/s", None),  # relative to another row: a reference here
    ("baseline", 144.9, "MB/s", None),
    ("published SDXL UNet 2.567B", 2567.46, "M", None),
    ("≈0.84 TFLOP UNet", 0.80, "TFLOP", None),
    ("", 1.0, "s", None),
])
def test_goals_are_judged_as_written(report, goal, value, unit, met):
    assert report.judge(goal, value, unit) is met


def test_a_gpu_goal_missed_on_a_cpu_says_so(report):
    row = {"metric": "m", "value": 29.7, "unit": "s", "goal": "<= 5 s on an H100"}
    assert report.verdict(row, "cpu: AMD EPYC (2 cores)") == "**not met** (CPU run; the goal is for a GPU)"
    assert report.verdict(row, "cuda: NVIDIA H100") == "**not met**"


def test_a_missing_headline_row_is_an_error_not_a_silent_gap(report):
    with pytest.raises(KeyError, match="headline row"):
        report.render_headline([])

