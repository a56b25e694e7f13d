"""Streaming mp4 encode speed (libx264 ultrafast, yuv420p) through ``trlrec.loggers.encode_mp4``.

Noise frames are the codec's worst case. Each figure is the median over a few
repetitions of ``frames / seconds`` for one whole ``encode_mp4`` call (ffmpeg start,
streaming, finish and rename included), from a uint8 ``(T, 3, H, W)`` tensor.

``python -m benchmarks.bench_encode [--smoke]``
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trlrec.loggers import encode_mp4

BUDGET_FPS_84 = 1000.0


def _encode_fps(frames: torch.Tensor, path: Path, reps: int) -> float:
    values = []
    for _ in range(reps):
        t0 = time.perf_counter()
        encode_mp4(frames, path, fps=30)
        values.append(frames.shape[0] / (time.perf_counter() - t0))
    return statistics.median(values)


def run(smoke: bool = False) -> list[dict[str, Any]]:
    """Encode fps at 84x84 and 210x160 (Atari) on noise frames.

    Args:
        smoke: a tiny, fast run (few frames, one repetition) that checks the code path;
            its figures are not meaningful and carry no verdict.

    Returns:
        Rows ``{"name", "value", "unit", "budget", "ok"}``.
    """
    n_frames, reps = (30, 1) if smoke else (1500, 3)
    gen = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="trlrec-bench-encode-") as tmp:
        for h, w in ((84, 84), (210, 160)):
            frames = torch.randint(0, 256, (n_frames, 3, h, w), dtype=torch.uint8, generator=gen)
            fps = _encode_fps(frames, Path(tmp) / f"noise_{h}x{w}.mp4", reps)
            budget = ">= 1000" if (h, w) == (84, 84) else None
            ok = None if (smoke or budget is None) else fps >= BUDGET_FPS_84
            rows.append(
                {
                    "name": f"mp4 encode {h}x{w}",
                    "value": round(fps, 1),
                    "unit": "fps",
                    "budget": budget,
                    "ok": ok,
                }
            )
    return rows


if __name__ == "__main__":
    for r in run(smoke="--smoke" in sys.argv[1:]):
        print(r)
