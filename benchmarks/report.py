"""The machine a run happened on, and the results as a text or markdown table."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

__all__ = ["load_average", "machine", "fmt_value", "verdict", "text_table", "markdown"]

COLUMNS = ("name", "value", "unit", "budget", "pass/miss")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) / 2**20 if m else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def source_version() -> str:
    """The commit measured, and whether trlrec/ or benchmarks/ differed from it."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--", "trlrec", "benchmarks")
    return f"{head} + uncommitted changes in trlrec/ or benchmarks/" if dirty else head


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as text."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _busy(info: dict[str, str]) -> bool:
    """Whether other processes competed for the CPU (a load average above the core count)."""
    cores = int(info.get("cores") or 0) or 1
    loads = [info.get(k, "") for k in ("load average at start", "load average at end")]
    try:
        return any(float(x.split()[0]) > cores for x in loads if x and x != "unknown")
    except ValueError:
        return False


def machine() -> dict[str, str]:
    """What the figures depend on: CPU, cores, RAM, load, versions, date."""
    ram = _ram_gib()
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": f"{ram:.1f} GiB" if ram else "unknown",
        "load average at start": load_average(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "torch": _version("torch"),
        "tensordict": _version("tensordict"),
        "torchrl": _version("torchrl"),
        "trlrec": f"{_version('trlrec')} at {source_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt_value(value: Any) -> str:
    """Numbers with 3 significant digits (integers kept whole); None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value == int(value) and abs(value) >= 100):
        return f"{int(value):,}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def verdict(ok: bool | None) -> str:
    """``pass``, ``MISS`` or empty when the figure has no budget."""
    return "" if ok is None else ("pass" if ok else "MISS")


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        str(r.get("name", "?")),
        fmt_value(r.get("value")),
        str(r.get("unit") or ""),
        str(r.get("budget") or ""),
        verdict(r.get("ok")),
    ]


def text_table(sections: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """An aligned plain-text table, one block of rows per module."""
    lines = [list(COLUMNS)] + [_cells(r) for _, rows in sections for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    right = {1}

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [fmt(list(COLUMNS)), fmt(["-" * w for w in widths])]
    for module, rows in sections:
        out.append(f"[{module}]")
        out.extend(fmt(_cells(r)) for r in rows)
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(
    sections: list[tuple[str, list[dict[str, Any]]]],
    info: dict[str, str],
    command: str,
    seconds: dict[str, float],
) -> str:
    """The BENCHMARKS.md text: machine, command, a table and notes per module."""
    rows = [r for _, rs in sections for r in rs]
    passed = sum(r.get("ok") is True for r in rows)
    missed = sum(r.get("ok") is False for r in rows)
    out = [
        "# trlrec benchmarks",
        "",
        "Generated by the command below; every figure was measured in that one run, on this",
        "machine. Timings are medians over repetitions; where two things are compared, the",
        "repetitions are interleaved and the figure is a ratio. Do not edit by hand: re-run.",
        "",
        "```",
        command,
        "```",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {_md_escape(v)} |" for k, v in info.items()),
        "",
        f"**{passed} within budget, {missed} missed**, {len(rows)} figures, "
        f"in {sum(seconds.values()) / 60:.1f} min.",
        "",
    ]
    if _busy(info):
        out += [
            "> The load average exceeded the core count: other processes competed for the CPU",
            "> during this run, so wall-clock figures are pessimistic (ratios less so).",
            "",
        ]
    for module, rs in sections:
        out += [f"### {module}", "", f"_{seconds.get(module, 0.0):.0f} s_", ""]
        out.append("| " + " | ".join(COLUMNS) + " |")
        out.append("|---|---:|---|---|---|")
        out.extend("| " + " | ".join(_md_escape(c) for c in _cells(r)) + " |" for r in rs)
        notes = [(r["name"], r["note"]) for r in rs if r.get("note")]
        if notes:
            out.append("")
            out.extend(f"- **{_md_escape(n)}**: {note}" for n, note in notes)
        out.append("")
    return "\n".join(out)
