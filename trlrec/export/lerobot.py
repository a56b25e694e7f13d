"""A trlrec store to a LeRobot v3.0 dataset directory (its documented on-disk layout).

LeRobot (the robotics standard; TorchRL reads it through
``LeRobotExperienceReplay``) keeps one row per frame in parquet, camera streams
as mp4, and JSON / parquet metadata. ``to_lerobot`` writes, without the
``lerobot`` package (whose install would replace this project's torch)::

    meta/info.json                  codebase_version "v3.0", fps, features, path templates
    meta/stats.json                 min / max / mean / std / count per feature
    meta/tasks.parquet              the task (one), index "task" -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks,
                                    data/{chunk,file}_index, dataset_{from,to}_index,
                                    videos/<key>/{chunk_index,file_index,from,to_timestamp},
                                    stats/<feature>/<stat>
    data/chunk-CCC/file-FFF.parquet frames of many episodes (a new file past 100 MB)
    videos/<key>/chunk-CCC/file-FFF.mp4   one episode per file (H.264, yuv420p)

A frame is a transition ``t`` of an episode: the observation keys at ``t``
(``observation`` -> ``observation.state``, image keys -> ``observation.images.<key>``
videos, other keys -> ``observation.<key>``), the action (``action``), and
``next.reward`` / ``next.done`` / ``next.terminated`` / ``next.truncated``, then
``timestamp`` (``t / fps``), ``frame_index``, ``episode_index``, ``index`` and
``task_index``. The recorded specs go in each feature's ``info`` (``trlrec_spec``).

Lossy steps, stated in the result's notes: videos are H.264 (``crf``, default 18;
``crf=0`` is lossless in luma but yuv420p still subsamples colour); the final
observation of each episode has no frame; features of more than one dimension
(other than videos) are flattened, their shape kept in ``names``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trlrec.cli.columns import key_name
from trlrec.errors import ConfigError, SchemaError, UnsupportedDataError
from trlrec.export.arrow import ArrowTable, ParquetWriter, PyArrow, PyArrowParquet, load_pyarrow
from trlrec.export.layout import (
    column,
    episodes_with_steps,
    progress_bar,
    store_layout,
)
from trlrec.export.result import ExportResult
from trlrec.specs import specs_to_json
from trlrec.storage.jsonio import write_json_atomic
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry

__all__ = ["to_lerobot", "CODEBASE_VERSION"]

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _is_image(e: Entry) -> bool:
    s = e.shape
    return e.dtype is torch.uint8 and (len(s) == 2 or (len(s) == 3 and s[-1] in (1, 3, 4)))


class _Feature:
    """One LeRobot feature made from one stored column."""

    def __init__(
        self, name: str, entry: Entry, spec: Any, *, video: bool = False, shift: bool = False
    ):
        self.name, self.entry, self.video, self.shift = name, entry, video, shift
        self.spec = spec
        if entry.dtype.is_complex:
            raise UnsupportedDataError(
                f"key {key_name(entry.key)!r} is complex; LeRobot cannot hold it"
            )
        # numpy has no bfloat16: float32 holds it exactly
        dtype = torch.float32 if entry.dtype is torch.bfloat16 else entry.dtype
        self.np_dtype = torch.empty((), dtype=dtype).numpy().dtype

    def values(self, reader: TrajectoryReader, episode: int, T: int) -> torch.Tensor:
        """The ``T`` values of one episode (a state flag: those after each transition)."""
        v = column(reader, episode, self.entry)
        return v[1 : T + 1] if self.shift else v[:T]

    def info(self) -> dict[str, Any]:
        shape = self.entry.shape
        if self.video:
            h, w = shape[0], shape[1]
            c = shape[2] if len(shape) == 3 else 1
            out: dict[str, Any] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.channels": 3,
                    "has_audio": False,
                    "trlrec_channels": c,
                },
            }
        else:
            n = math.prod(shape) if shape else 1
            out = {
                "dtype": "bool" if self.np_dtype == np.bool_ else str(self.np_dtype),
                "shape": [n],
                "names": None if len(shape) <= 1 else {"trlrec_shape": list(shape)},
            }
        if self.spec is not None:
            out.setdefault("info", {})["trlrec_spec"] = specs_to_json(self.spec)["spec"]
        return out


def _features(layout: Any) -> tuple[list[_Feature], list[str]]:
    specs = layout.specs
    feats: list[_Feature] = []
    notes: list[str] = []
    names: set[str] = set(_DEFAULT_FEATURES)

    def add(name: str, e: Entry, spec: Any, **kw: Any) -> None:
        if name in names:
            name = f"{name}.{e.role}"
        names.add(name)
        feats.append(_Feature(name, e, spec, **kw))

    for e in layout.observation:
        spec = specs.observation[e.key]
        if _is_image(e):
            add("observation.images." + ".".join(e.key), e, spec, video=True)
        elif e.key == ("observation",):
            add("observation.state", e, spec)
        else:
            add("observation." + ".".join(e.key), e, spec)
    for e in layout.action:
        add(
            "action" if e.key == ("action",) else "action." + ".".join(e.key),
            e,
            specs.action[e.key],
        )
    if layout.reward is not None:
        add("next.reward", layout.reward, specs.reward[layout.reward.key])
    flags = {"terminated": layout.terminated, "truncated": layout.truncated}
    done_entry = next((x for x in layout.extra if x.key == ("done",) and x.role == "state"), None)
    if done_entry is not None:
        flags["done"] = done_entry
    for name, e in flags.items():
        if e is not None:
            add(f"next.{name}", e, specs.done[e.key], shift=True)
    for e in layout.extra:
        if e is done_entry:
            continue
        prefix = "next." if e.role == "next" else ""
        add(prefix + ".".join(e.key), e, None)
    if any(len(f.entry.shape) > 1 and not f.video for f in feats):
        notes.append("features of 2 or more dimensions are flattened (their shape is in 'names')")
    if any(f.entry.dtype is torch.bfloat16 for f in feats):
        notes.append("bfloat16 keys are written as float32 (exact)")
    if any(f.video for f in feats):
        notes.append("image keys are H.264 videos (yuv420p): lossy")
    if any(f.video and len(f.entry.shape) == 3 and f.entry.shape[-1] == 4 for f in feats):
        notes.append("the alpha channel of RGBA image keys is dropped")
    notes.append("the final observation of each episode has no frame in LeRobot's layout")
    return feats, notes


def _stats(x: torch.Tensor, video: bool) -> dict[str, Any]:
    """The min / max / mean / std / count of one episode's values of a feature."""
    n = x.shape[0]
    if video:  # per channel, in [0, 1], shaped (C, 1, 1) as LeRobot's image stats
        per = x.reshape(n, -1, x.shape[-1] if x.ndim == 4 else 1).permute(2, 0, 1)
        per = per.reshape(per.shape[0], -1)  # [C, N] uint8: exact integer sums
        count = per.shape[1]
        mean = per.sum(1, dtype=torch.int64).double() / count
        square = (per.to(torch.int64) ** 2).sum(1).double() / count
        std = (square - mean**2).clamp_min(0).sqrt()
        out = [per.amin(1).double(), per.amax(1).double(), mean, std]
        mn, mx, mean, std = (v.numpy().reshape(-1, 1, 1) / 255.0 for v in out)
    else:
        flat = x.reshape(n, -1).double()
        mn, mx = flat.amin(0).numpy(), flat.amax(0).numpy()
        mean, std = flat.mean(0).numpy(), flat.std(0, unbiased=False).numpy()
    return {"min": mn, "max": mx, "mean": mean, "std": std, "count": np.array([n])}


def _merge(total: dict[str, Any] | None, s: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return {k: v.copy() for k, v in s.items()}
    n1, n2 = float(total["count"][0]), float(s["count"][0])
    n = n1 + n2
    mean = (total["mean"] * n1 + s["mean"] * n2) / n
    var = (
        (total["std"] ** 2 + (total["mean"] - mean) ** 2) * n1
        + (s["std"] ** 2 + (s["mean"] - mean) ** 2) * n2
    ) / n
    return {
        "min": np.minimum(total["min"], s["min"]),
        "max": np.maximum(total["max"], s["max"]),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(n)]),
    }


def _json_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() for k, v in stats.items()}


def _rgb(frames: torch.Tensor) -> np.ndarray:
    x = frames.numpy()
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, -1)
    return np.ascontiguousarray(x[..., :3])


def _arrow_column(pa: PyArrow, x: np.ndarray, f: _Feature) -> Any:
    if x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1 and f.entry.shape in ((), (1,))):
        return pa.array(x.reshape(-1))
    flat = x.reshape(x.shape[0], -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _tasks_table(pa: PyArrow, task: str) -> ArrowTable:
    table = pa.table({"task_index": pa.array([0], pa.int64()), "task": pa.array([task])})
    pandas_meta = {  # so pandas.read_parquet (LeRobot's load_tasks) indexes it by task
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }  # fmt: skip
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def to_lerobot(
    store: str | os.PathLike[str] | TrajectoryReader,
    out: str | os.PathLike[str],
    *,
    fps: int = 30,
    task: str | None = None,
    robot_type: str | None = None,
    crf: int = 18,
    progress: bool = True,
) -> ExportResult:
    """Write the episodes of a store as a LeRobot v3.0 dataset in the new directory ``out``.

    Args:
        store: the store directory or an open reader.
        out: the dataset directory to create (it must not exist or be empty).
        fps: the frame rate stamped on frames and videos.
        task: the task description of every episode (default: the store's
            ``metadata["task"]``, else ``"trlrec recording <store name>"``).
        robot_type: LeRobot's ``robot_type`` (default: ``metadata["robot_type"]``).
        crf: H.264 quality of the videos (0 best .. 51 worst).
        progress: draw ``episodes done/total`` on stderr when it is a terminal.

    Returns:
        :class:`~trlrec.export.ExportResult` with the directory, counts and lossy steps.

    Raises:
        MissingDependencyError: pyarrow is not installed.
        ConfigError: ``out`` is a non-empty directory, or ``fps`` is not positive.
    """
    pa, pq = load_pyarrow("lerobot")
    from trlrec.loggers.mp4 import Mp4Writer

    if not (isinstance(fps, int | float) and fps > 0 and float(fps).is_integer()):
        raise ConfigError(f"fps must be a positive whole number (LeRobot's is an int), got {fps!r}")
    fps = int(fps)
    reader = store if isinstance(store, TrajectoryReader) else TrajectoryReader(store)
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{str(root)!r} exists and is not an empty directory; choose a new one")
    layout = store_layout(reader)
    if not layout.observation and not layout.action:
        raise SchemaError(f"the store {str(reader.path)!r} has no observation nor action key")
    feats, notes = _features(layout)
    task = task or str(reader.metadata.get("task") or f"trlrec recording {reader.path.name}")
    robot_type = robot_type or reader.metadata.get("robot_type")
    videos = [f for f in feats if f.video]
    table_feats = [f for f in feats if not f.video]
    indices = list(episodes_with_steps(reader))
    root.mkdir(parents=True, exist_ok=True)
    result = ExportResult(str(root), root, notes=notes)
    totals: dict[str, dict[str, Any] | None] = {f.name: None for f in feats}
    episode_rows: list[dict[str, Any]] = []
    writer: ParquetWriter | None = None
    data_file = 0
    frames_in_file = 0
    index = 0
    try:
        with progress_bar(f"export {root.name}", len(indices), progress) as bar:
            for ep_index, i in enumerate(indices):
                T = reader.episode_info(i)["num_steps"]
                cols: dict[str, Any] = {}
                row: dict[str, Any] = {"episode_index": ep_index, "tasks": [task], "length": T}
                for f in table_feats:
                    x = f.values(reader, i, T)
                    x = x.float() if x.dtype is torch.bfloat16 else x
                    cols[f.name] = _arrow_column(pa, x.numpy(), f)
                    s = _stats(x, False)
                    totals[f.name] = _merge(totals[f.name], s)
                    row.update({f"stats/{f.name}/{k}": v.tolist() for k, v in s.items()})
                t = np.arange(T)
                cols["timestamp"] = pa.array((t / fps).astype(np.float32))
                cols["frame_index"] = pa.array(t.astype(np.int64))
                cols["episode_index"] = pa.array(np.full(T, ep_index, np.int64))
                cols["index"] = pa.array(np.arange(index, index + T, dtype=np.int64))
                cols["task_index"] = pa.array(np.zeros(T, np.int64))
                table = pa.table(cols)
                if writer is not None and (
                    Path(writer.where).stat().st_size > DATA_FILES_SIZE_IN_MB * 2**20
                ):
                    writer.close()
                    writer, data_file, frames_in_file = None, data_file + 1, 0
                if writer is None:
                    chunk, file = divmod(data_file, CHUNKS_SIZE)
                    path = root / DATA_PATH.format(chunk_index=chunk, file_index=file)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    writer = pq.ParquetWriter(str(path), table.schema)
                writer.write_table(table)
                chunk, file = divmod(data_file, CHUNKS_SIZE)
                row.update({
                    "data/chunk_index": chunk,
                    "data/file_index": file,
                    "dataset_from_index": index,
                    "dataset_to_index": index + T,
                })  # fmt: skip
                frames_in_file += T
                index += T
                for f in videos:
                    frames = f.values(reader, i, T)
                    chunk, file = divmod(ep_index, CHUNKS_SIZE)
                    path = root / VIDEO_PATH.format(
                        video_key=f.name, chunk_index=chunk, file_index=file
                    )
                    path.parent.mkdir(parents=True, exist_ok=True)
                    h, w = f.entry.shape[0], f.entry.shape[1]
                    with Mp4Writer(path, w, h, fps, crf=crf) as mp4:
                        for frame in _rgb(frames):
                            mp4.write(frame)
                    s = _stats(frames.reshape(T, h, w, -1), True)
                    totals[f.name] = _merge(totals[f.name], s)
                    row.update({f"stats/{f.name}/{k}": v.tolist() for k, v in s.items()})
                    row.update({
                        f"videos/{f.name}/chunk_index": chunk,
                        f"videos/{f.name}/file_index": file,
                        f"videos/{f.name}/from_timestamp": 0.0,
                        f"videos/{f.name}/to_timestamp": T / fps,
                    })  # fmt: skip
                row["meta/episodes/chunk_index"] = 0
                row["meta/episodes/file_index"] = 0
                episode_rows.append(row)
                result.episodes += 1
                result.steps += T
                bar.update(ep_index + 1)
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(root, ignore_errors=True)
        raise
    if writer is not None:
        writer.close()
    _write_meta(pa, pq, root, reader, feats, totals, episode_rows, fps, task, robot_type, index)
    skipped = reader.num_episodes - len(indices)
    if skipped:
        result.notes.append(f"{skipped} episode(s) without a transition were left out")
    return result


def _write_meta(
    pa: PyArrow,
    pq: PyArrowParquet,
    root: Path,
    reader: TrajectoryReader,
    feats: list[_Feature],
    totals: dict[str, Any],
    episode_rows: list[dict[str, Any]],
    fps: int,
    task: str,
    robot_type: str | None,
    frames: int,
) -> None:
    features = {f.name: f.info() for f in feats}
    for f in feats:
        if f.video:
            features[f.name]["info"]["video.fps"] = fps
    features.update({
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    })  # fmt: skip
    n = len(episode_rows)
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": n,
        "total_frames": frames,
        "total_tasks": 1,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": fps,
        "splits": {"train": f"0:{n}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if any(f.video for f in feats) else None,
        "features": features,
    }
    meta = root / "meta"
    meta.mkdir(exist_ok=True)
    write_json_atomic(meta / "info.json", info)
    stats = {name: _json_stats(s) for name, s in totals.items() if s is not None}
    write_json_atomic(meta / "stats.json", stats)
    pq.write_table(_tasks_table(pa, task), str(meta / "tasks.parquet"))
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if episode_rows:
        columns = {k: [r.get(k) for r in episode_rows] for k in episode_rows[0]}
        pq.write_table(pa.table(columns), str(path))
    write_json_atomic(  # where the data came from, for people reading the directory
        meta / "trlrec.json", {"source": str(reader.path), "metadata": reader.metadata}
    )
