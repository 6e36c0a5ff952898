"""Render every ``bench/results/*.json`` into the results table in README.md.

    python bench/report.py          # rewrite the table between the bench markers in README.md
    python bench/report.py --print  # only print it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def render(results_dir: Path) -> str:
    lines = ["| benchmark | metric | value | goal | device |", "|---|---|---|---|---|"]
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for r in data.get("rows", []):
            value = f"{r['value']:g} {r['unit']}".strip()
            lines.append(f"| {data['benchmark']} | {r['metric']} | {value} | {r.get('goal', '')} "
                         f"| {r.get('device', data['machine'].get('device', ''))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the table instead of editing README.md")
    args = parser.parse_args()
    table = render(ROOT / "bench" / "results")
    if args.print:
        print(table)
        return
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
