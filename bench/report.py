"""Render every ``bench/results/*.json`` into two tables: all rows in docs/benchmarks.md, and the
ten figures a newcomer asks about first in README.md.

Each benchmark writes its goal as free text ("<= 20 MB", "≤ 1000 ms (RFC 6762 probing ...)",
"<= 5 ms or <= 5%"). A goal that starts with a bound in the row's own unit, or in no unit, is
judged here as met or not met; alternatives joined by " or " are judged one by one and any met one
counts. Every other goal ("baseline", "published SDXL UNet 2.567B", ">= 0.9x sha256sum" on a MB/s
row) is a reference point and gets no verdict. A goal stated for a GPU but measured on a CPU is
still judged, and the verdict says so, because a reader should see the gap either way.

    python bench/report.py           # rewrite both tables between the bench markers
    python bench/report.py --check   # exit 1 when either committed table is out of date
    python bench/report.py --print   # print both tables instead of writing them
"""

from __future__ import annotations

import argparse
import json
import operator
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

# (benchmark, metric, what a user calls it): quality, size, install, first picture, latency,
# throughput, API cost, verification, isolation cost, robustness. At most ten, by design.
HEADLINE = (
    ("embedded-cpu", "held-out adherence: colour and shape", "Embedded model draws the colour and shape asked for"),
    ("embedded-cpu", "weights", "Embedded model size (ships inside the package)"),
    ("install", "one-click install, fresh (air-gapped bundle, no downloads)",
     "One-click install on a fresh machine, from a bundle"),
    ("daemon-cpu", "serve start to first image (fresh home)", "`pennello serve` to first picture, embedded model"),
    ("embedded-cpu", "latency 64x64 4 steps guidance 2, batch 1", "Per-picture latency, embedded model, CPU"),
    ("daemon-cpu", "batching gain", "Throughput gain when 8 clients share the model (batching)"),
    ("daemon-cpu", "HTTP overhead, median of paired differences", "HTTP API cost per picture"),
    ("verify-cpu", "Store.verify / sha256sum", "Model verification speed, relative to `sha256sum`"),
    ("isolation-cpu", "GET /api/models: proxy hop, median of paired differences",
     "Network-isolated model worker: cost per request"),
    ("fuzz", "server errors (5xx)", "Server errors under API fuzzing"),
)

_COMPARE = {"<=": operator.le, "≤": operator.le, ">=": operator.ge, "≥": operator.ge,
            "<": operator.lt, ">": operator.gt, "=": operator.eq}
# A bound: optional comparison, a number, then an optional unit that ends at a space or "(".
_BOUND = re.compile(r"\s*(<=|>=|≤|≥|<|>|=)?\s*(-?\d+(?:\.\d+)?)\s*([^\s\d(][^\s(]*)?")
_GPU_WORDS = ("GPU", "H100", "H200")

Result = dict  # one results file, as bench/_common.py writes it


def load(results_dir: Path = RESULTS) -> list[Result]:
    """Every results file, in file-name order so the tables are stable.

    Raises:
        ValueError: a file holds a ``--shrunk`` run (bench/_common.py), which measures nothing real
            and must never reach a table; its name is in the message.
    """
    paths = sorted(results_dir.glob("*.json"))
    results = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    shrunk = [p.name for p, result in zip(paths, results) if result.get("shrunk")]
    if shrunk:
        raise ValueError(f"{', '.join(shrunk)} in {results_dir}: a --shrunk run proves a script works and "
                         "measures nothing real; remove it, it is no figure to table")
    return results


def judge(goal: str, value: float, unit: str) -> bool | None:
    """True / False when ``goal`` is a bound this row can be checked against, else None."""
    verdicts = []
    for alternative in goal.split(" or "):
        match = _BOUND.match(alternative)
        if not match or (match[3] and match[3] != unit):
            continue
        verdicts.append(_COMPARE[match[1] or "="](value, float(match[2])))
    return any(verdicts) if verdicts else None


def verdict(row: dict, device: str) -> str:
    """The verdict cell: "met", "**not met**" (bold, to stand out), or "" for a reference goal."""
    met = judge(row.get("goal", ""), row["value"], row["unit"])
    if met is None:
        return ""
    text = "met" if met else "**not met**"
    if device.startswith("cpu") and any(word in row["goal"] for word in _GPU_WORDS):
        text += " (CPU run; the goal is for a GPU)"
    return text


def _device(row: dict, result: Result) -> str:
    return row.get("device") or result["machine"].get("device", "")


def _value(row: dict, digits: str = "g") -> str:
    return f"{row['value']:{digits}} {row['unit']}".strip()


def render_full(results: list[Result]) -> str:
    """docs/benchmarks.md's block: the goals not met first, then one table per benchmark."""
    misses, judged, sections = [], 0, []
    for result in results:
        name = result["benchmark"]
        devices = ", ".join(sorted({_device(r, result) for r in result["rows"]}))
        lines = [f"### {name}", "", f"{devices}; {result['machine'].get('date', 'undated')}", "",
                 "| metric | value | goal | verdict |", "|---|---|---|---|"]
        for row in result["rows"]:
            cell = verdict(row, _device(row, result))
            judged += bool(cell)
            if "not met" in cell:
                misses.append(f"- {name}: {row['metric']}: {_value(row)}, goal {row['goal']}: {cell}")
            lines.append(f"| {row['metric']} | {_value(row)} | {row.get('goal', '')} | {cell} |")
        sections.append("\n".join(lines))
    summary = [f"**{len(misses)} of {judged} judged goals not met:**", "", *misses]
    return "\n\n".join(["\n".join(summary), *sections])


def render_headline(results: list[Result]) -> str:
    """README's block: the HEADLINE rows, rounded for reading, with their goal and verdict."""
    rows = {(r["benchmark"], row["metric"]): (row, r) for r in results for row in r["rows"]}
    lines = ["| what | measured | goal | verdict |", "|---|---|---|---|"]
    for benchmark, metric, label in HEADLINE:
        if (benchmark, metric) not in rows:
            raise KeyError(f"headline row {benchmark!r} / {metric!r} is in no bench/results/*.json")
        row, result = rows[benchmark, metric]
        goal = row.get("goal") or "none set"
        lines.append(f"| {label} | {_value(row, '.3g')} | {goal} | {verdict(row, _device(row, result)) or '—'} |")
    return "\n".join(lines)


def tables(results: list[Result]) -> dict[Path, str]:
    """Each file this script writes, with the block that belongs between its bench markers."""
    return {README: render_headline(results), BENCHMARKS: render_full(results)}


def splice(text: str, block: str) -> str:
    """``text`` with everything between the bench markers replaced by ``block``."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise ValueError(f"no {START} ... {END} markers")
    return f"{head}{START}\n{block}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="print both tables instead of writing them")
    mode.add_argument("--check", action="store_true", help="exit 1 when a committed table is out of date")
    args = parser.parse_args()
    try:
        results = load()
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    stale = []
    for path, block in tables(results).items():
        if args.print:
            print(f"{path.relative_to(ROOT)}:\n{block}\n")
            continue
        text = path.read_text(encoding="utf-8")
        wanted = splice(text, block)
        if wanted == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(wanted, encoding="utf-8")
    if stale:
        print(("out of date: " if args.check else "updated: ") + ", ".join(map(str, stale)))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
