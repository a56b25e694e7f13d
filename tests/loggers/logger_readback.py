"""Read-back helpers: decode what each logger backend stored, through its real format.

mp4 is decoded with imageio-ffmpeg, GIF with imageio, CSV files with :mod:`csv` (in
TorchRL's layout), TensorBoard event files are read with TensorBoard's
``EventAccumulator``, and an offline W&B run's ``.wandb`` file is parsed record by record.
"""

from __future__ import annotations

import csv
import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch

from trlrec.loggers import Logger
from trlrec.loggers.wandb import step_key
from trlrec.naming import safe_name

TOL = 8  # codec tolerance on solid colours, per channel

# Distinct, saturated-ish colours that survive yuv420p and GIF palettes.
COLOURS = [(200, 30, 40), (20, 180, 60), (40, 60, 220), (230, 230, 230), (10, 10, 10)]


def solid_frames(n: int, h: int, w: int, channels: int = 3) -> torch.Tensor:
    """uint8 ``(n, channels, h, w)`` frames, frame ``i`` filled with ``COLOURS[i % 5]``."""
    out = torch.empty(n, channels, h, w, dtype=torch.uint8)
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)][:channels]
        out[i] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    return out


def expected_rgb(frames: torch.Tensor) -> np.ndarray:
    """``(T, C, H, W)`` uint8 → ``(T, H, W, 3)`` as the encoder should see it."""
    x = frames
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x[:, :3].permute(0, 2, 3, 1).numpy()


def assert_frames_close(got: np.ndarray, want: np.ndarray, tol: int = TOL) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= tol, f"max pixel error {diff.max()} > {tol}"


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode an mp4 into ``(T, H, W, 3)`` uint8 (the stored, possibly padded, size)."""
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    return np.stack(frames)


def mp4_fps(path: str | Path) -> float:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    gen.close()
    return float(meta["fps"])


def read_gif(data: bytes) -> np.ndarray:
    """Decode an animated GIF into ``(T, H, W, 3)`` uint8."""
    frames = iio.imread(data, index=None, extension=".gif")
    return np.asarray(frames)[..., :3]


def wandb_records(run_dir: Path, timeout: float = 20.0) -> list[Any]:
    """The records of a finished offline run's ``run-*.wandb`` file (LevelDB log format).

    ``run.finish()`` returns before wandb-core has written everything: wait for the
    run's final ``exit`` record.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _parse_wandb_file(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"no exit record in {run_dir} after {timeout} s")
        time.sleep(0.05)


def _parse_wandb_file(run_dir: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def wandb_history(run_dir: Path) -> list[dict[str, str]]:
    """History rows of an offline run: ``{key: value_json}``, nested keys joined by ``/``."""
    rows = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item})
    return rows


@dataclass
class Backend:
    """A logger plus the code that reads back what it stored, after ``close()``."""

    kind: str
    logger: Logger

    def close(self) -> None:
        self.logger.close()

    # -- scalars -----------------------------------------------------------------------
    def scalars(self, name: str) -> list[tuple[int, float]]:
        lg: Any = self.logger
        if self.kind == "memory":
            return list(lg.scalars[name])
        if self.kind == "csv":  # TorchRL's layout: "/" as folders, no header
            with open(lg.scalar_path(name), newline="") as fh:
                return [(int(s), float(v)) for s, v in csv.reader(fh)]
        if self.kind == "tensorboard":
            return [(e.step, e.value) for e in self._tb().Scalars(name)]
        rows = wandb_history(Path(lg.experiment.dir).parent)
        return [(int(r[step_key(name)]), float(r[name])) for r in rows if name in r]

    # -- histograms and texts ----------------------------------------------------------
    def histograms(self, name: str) -> list[tuple[int, int]]:
        """``(step, number of values)`` of each histogram logged under ``name``."""
        lg: Any = self.logger
        if self.kind == "memory":
            return [(step, len(values)) for step, values in lg.histograms[name]]
        if self.kind == "tensorboard":
            return [(e.step, int(e.histogram_value.num)) for e in self._tb().Histograms(name)]
        rows = wandb_history(Path(lg.experiment.dir).parent)
        out = []
        for r in rows:
            if f"{name}/_type" in r:
                assert json.loads(r[f"{name}/_type"]) == "histogram"
                out.append((int(r[step_key(name)]), sum(json.loads(r[f"{name}/values"]))))
        return out

    def texts(self, name: str) -> list[tuple[int, str]]:
        """``(step, text)`` of each ``log_str`` under ``name``."""
        lg: Any = self.logger
        if self.kind == "memory":
            return list(lg.texts[name])
        if self.kind == "csv":  # TorchRL's texts/<name><step>.txt
            stem = safe_name(name)
            found = [(int(p.stem[len(stem) :]), p) for p in lg.texts_dir.glob(f"{stem}*.txt")]
            return [(step, p.read_text()) for step, p in sorted(found)]
        if self.kind == "tensorboard":
            events = self._tb().Tensors(f"{name}/text_summary")
            return [(e.step, e.tensor_proto.string_val[0].decode()) for e in events]
        run_dir = Path(lg.experiment.dir).parent
        out = []
        for r in wandb_history(run_dir):  # as TorchRL: a str at an explicit step, else a table
            if f"{name}/_type" in r:
                table = json.loads((run_dir / "files" / json.loads(r[f"{name}/path"])).read_text())
                out.append((int(r[step_key(name)]), table["data"][0][0]))
            elif name in r:
                out.append((int(r[step_key(name)]), json.loads(r[name])))
        return out

    # -- videos ------------------------------------------------------------------------
    def video(self, name: str, step: int) -> np.ndarray:
        """The decoded video ``(T, H, W, 3)`` logged under ``name`` at ``step``."""
        lg: Any = self.logger
        if self.kind == "memory":
            (v,) = [v for v in lg.videos[name] if v.step == step]
            return v.frames.permute(0, 2, 3, 1).numpy()
        if self.kind == "csv":
            return read_mp4(lg.video_path(name, step))
        if self.kind == "tensorboard":
            (event,) = [e for e in self._tb().Images(name) if e.step == step]
            frames = read_gif(event.encoded_image_string)
            assert (event.height, event.width) == frames.shape[1:3]
            return frames
        rows = wandb_history(Path(lg.experiment.dir).parent)
        (row,) = [r for r in rows if f"{name}/path" in r and int(r[step_key(name)]) == step]
        assert row[f"{name}/_type"] == '"video-file"'
        rel = row[f"{name}/path"].strip('"')
        return read_mp4(Path(lg.experiment.dir) / rel)

    def _tb(self) -> Any:
        from tensorboard.backend.event_processing import event_accumulator as ea

        acc = ea.EventAccumulator(
            str(self.logger.experiment_dir),
            size_guidance={ea.IMAGES: 0, ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0},
        )
        acc.Reload()
        return acc
