"""Run the benchmark modules, print a table and write it as markdown.

``python -m benchmarks [--smoke] [--only NAME ...] [--out PATH]``

Every ``benchmarks/bench_*.py`` module's ``run(smoke)`` is called in turn. A module
that raises (or returns malformed rows) gets a ``FAILED`` row and the run goes on;
the exit status is 1 if any module failed. A whole run writes the table to
``BENCHMARKS.md`` at the repository root; ``--smoke`` and ``--only`` runs write it only
where ``--out`` says.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.report import load_average, machine, markdown, text_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEYS = ("name", "value", "unit", "budget", "ok")


def discover() -> list[str]:
    """The benchmark module names (``bench_*``), sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def select(names: list[str], only: list[str] | None) -> list[str]:
    """The modules ``--only`` asks for (``store`` or ``bench_store``; comma lists allowed)."""
    if not only:
        return names
    wanted = {w if w.startswith("bench_") else f"bench_{w}" for o in only for w in o.split(",")}
    unknown = wanted - set(names)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; available: {names}")
    return [n for n in names if n in wanted]


def failure(module: str, err: str) -> dict[str, Any]:
    """The row standing for a module that could not produce its figures."""
    return {
        "name": f"{module} FAILED",
        "value": None,
        "unit": "",
        "budget": None,
        "ok": False,
        "note": err,
    }


def check_rows(rows: Any) -> list[dict[str, Any]]:
    """Rows as the contract says, or a ValueError naming what is wrong."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"run() returned {type(rows).__name__} {rows!r:.80}, not a non-empty list")
    for r in rows:
        if not isinstance(r, dict) or any(k not in r for k in KEYS):
            raise ValueError(f"run() returned a row without the keys {KEYS}: {r!r:.200}")
        if r["ok"] not in (True, False, None):
            raise ValueError(f"row {r['name']!r}: ok must be True, False or None, got {r['ok']!r}")
    return rows


def run_module(module: str, smoke: bool) -> list[dict[str, Any]]:
    """Import and run one module; a failure becomes a FAILED row."""
    try:
        mod = importlib.import_module(f"benchmarks.{module}")
        return check_rows(mod.run(smoke=smoke))
    except Exception as err:  # a failing module must not stop the others
        traceback.print_exc(file=sys.stderr)
        return [failure(module, f"{type(err).__name__}: {err}".splitlines()[0][:300])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    parser.add_argument("--only", action="append", metavar="NAME", help="run these modules only")
    parser.add_argument(
        "--out", type=Path, help="markdown file (default: BENCHMARKS.md for a whole run)"
    )
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    # BENCHMARKS.md holds whole runs only: a partial one (--only) would drop the rest
    full = not args.smoke and not args.only
    out = args.out if args.out is not None else (REPO / "BENCHMARKS.md" if full else None)
    modules = select(discover(), args.only)
    info = machine()
    command = shlex.join([".venv/bin/python", "-m", "benchmarks", *argv])
    sections: list[tuple[str, list[dict[str, Any]]]] = []
    seconds: dict[str, float] = {}
    failed = False
    for module in modules:
        print(f"[{module}] running...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rows = run_module(module, args.smoke)
        seconds[module] = time.perf_counter() - t0
        failed |= any(r["name"] == f"{module} FAILED" for r in rows)
        print(f"[{module}] done in {seconds[module]:.1f} s", file=sys.stderr, flush=True)
        sections.append((module, rows))
    print(text_table(sections))
    info["load average at end"] = load_average()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(sections, info, command, seconds))
        print(f"wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
