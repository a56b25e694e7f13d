"""Anonymous resident memory (RssAnon) while recording, against the same loop without it.

Each case runs in a fresh subprocess (``python -m benchmarks.bench_memory CASE...``)
so that allocations of one case cannot hide or inflate another. The loop appends
prebuilt transitions (``benchmarks.synth.step_cycle``): a real env step would make
a million steps take minutes without changing what the store allocates. RssAnon is
sampled a hundred times during the loop; the figure is its peak. Page cache used
by the memory maps shows up in RssFile, not RssAnon, and the kernel reclaims it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import row
from benchmarks.disk import REPO, scratch

GROWTH_BUDGET_MB = 64.0
FLAT_BUDGET_MB = 16.0  # "a million steps costs the same RAM as a thousand", with some noise


def rss_anon_kb() -> int:
    """RssAnon of this process, in kB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^RssAnon:\s*(\d+) kB", text, re.MULTILINE).group(1))


def measure(kind: str, steps: int, record: bool, path: Path) -> dict[str, Any]:
    """Run the step loop, recording into ``path`` or not; peak RssAnon and timing."""
    from benchmarks.synth import step_cycle
    from trlrec.storage.writer import TrajectoryWriter

    cycle = step_cycle(kind, 200)
    writer = TrajectoryWriter(path) if record else None
    start = peak = rss_anon_kb()
    every = max(1, steps // 100)
    t0 = time.perf_counter()
    for i in range(steps):
        td = cycle[i % len(cycle)]
        if writer is not None:
            writer.append(td)
        if i % every == 0:
            peak = max(peak, rss_anon_kb())
    peak = max(peak, rss_anon_kb())
    seconds = time.perf_counter() - t0
    if writer is not None:
        writer.close()
    return {"start_kb": start, "peak_kb": peak, "seconds": seconds}


def _spec(kind: str, steps: int, record: bool) -> str:
    return f"{kind}:{steps}:{int(record)}"


def _child(specs: list[str], base: Path) -> list[dict[str, Any]]:
    """Run ``specs`` in one fresh interpreter; one JSON result per spec."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", str(base), *specs],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory case {specs} failed: {proc.stderr.strip()[-500:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _label(kind: str, steps: int) -> str:
    n = f"{steps // 1_000_000} M" if steps >= 1_000_000 else f"{steps // 1000} k"
    return f"{n} small steps" if kind == "small" else f"{n} 84x84x3 pixel frames"


def run(smoke: bool = False) -> list[dict[str, Any]]:
    sizes = (
        [("small", 2_000)]
        if smoke
        else [("small", 10_000), ("small", 100_000), ("small", 1_000_000), ("pixels", 100_000)]
    )
    with scratch("trlrec-mem-") as base:
        if smoke:  # one interpreter for both: checks the code path, not the figure
            results = dict(zip([(*sizes[0], False), (*sizes[0], True)], _child(
                [_spec(*sizes[0], False), _spec(*sizes[0], True)], base
            ), strict=True))  # fmt: skip
        else:  # one interpreter per case; two at a time (memory, not time, is measured)
            cases = [(kind, n, rec) for kind, n in sizes for rec in (False, True)]
            with ThreadPoolExecutor(max_workers=2) as pool:
                outs = pool.map(lambda c: _child([_spec(*c)], base)[0], cases)
                results = dict(zip(cases, outs, strict=True))
    out, growth = [], {}
    for kind, n in sizes:
        bare, rec = results[(kind, n, False)], results[(kind, n, True)]
        mb = (rec["peak_kb"] - bare["peak_kb"]) / 1024
        growth[(kind, n)] = mb
        out.append(
            row(
                f"RssAnon growth: {_label(kind, n)}",
                mb,
                "MB",
                f"≤ {GROWTH_BUDGET_MB:g}",
                mb <= GROWTH_BUDGET_MB,
                note=f"peak RssAnon {rec['peak_kb'] / 1024:.0f} MB recording vs "
                f"{bare['peak_kb'] / 1024:.0f} MB bare (same loop, no append); "
                f"{rec['seconds'] / n * 1e6:.1f} µs/step recording, "
                f"{bare['seconds'] / n * 1e6:.2f} µs/step bare",
            )
        )
    small = [n for kind, n in sizes if kind == "small"]
    if len(small) > 1:
        delta = growth[("small", small[-1])] - growth[("small", small[0])]
        out.append(
            row(
                f"RssAnon growth: {_label('small', small[-1])} - {_label('small', small[0])}",
                delta,
                "MB",
                f"≤ {FLAT_BUDGET_MB:g}",
                delta <= FLAT_BUDGET_MB,
                note="flat: recording longer must not cost more RAM",
            )
        )
    return out


def _main(argv: list[str]) -> None:
    base = Path(argv[0])
    for spec in argv[1:]:
        kind, steps, record = spec.split(":")
        path = base / f"{kind}-{steps}-{record}-{time.perf_counter_ns()}"
        print(json.dumps(measure(kind, int(steps), record == "1", path)), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
