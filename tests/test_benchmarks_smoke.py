"""The benchmark command runs end to end in smoke mode (figures are not checked: speed is
only reported, never asserted)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_benchmarks_smoke_runs_every_module(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modules = sorted(p.stem for p in (REPO / "benchmarks").glob("bench_*.py"))
    assert modules
    text = out.read_text()
    assert "FAILED" not in text, text
    for module in modules:
        section = re.search(rf"^### {module}\n(.*?)(?=^### |\Z)", text, re.S | re.M)
        assert section, f"no section for {module}"
        rows = [line for line in section.group(1).splitlines() if line.startswith("| ")]
        assert len(rows) >= 2, f"{module} produced no rows"  # header + at least one row
        assert f"[{module}]" in proc.stdout


def test_benchmarks_only_selects_one_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", "nonexistent"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "bench_nonexistent" in proc.stderr


def test_bench_cuda_smoke_runs_without_a_gpu(tmp_path, monkeypatch):
    """bench_cuda imports and smoke-runs on a CPU-only torch, saying so in every row."""
    import torch

    from benchmarks import bench_cuda
    from benchmarks.__main__ import check_rows

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    rows = check_rows(bench_cuda.run(smoke=True))
    names = [r["name"] for r in rows]
    assert any("TensorDictRecorder vs no-op transform" in n for n in names)
    assert any("VideoRecorder (grid)" in n for n in names)
    assert "extend / pinned copy_" in names
    assert any(n.startswith("host RssAnon growth") for n in names)
    assert all(isinstance(r["value"], float | int) for r in rows)
    if not torch.cuda.is_available():
        assert all(r["ok"] is None and r["note"] == bench_cuda.NO_CUDA for r in rows)
