"""What ``trlrec info`` reports about a store: counts, statistics, keys, sizes, shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trlrec.cli.columns import episode_column, key_name
from trlrec.cli.progress import Progress
from trlrec.storage.dtypes import dtype_name
from trlrec.storage.format import FLAG_CUT, FLAG_DONE, FLAG_OPEN
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry
from trlrec.storage.shard_reader import worker_label

__all__ = ["summarize", "disk_usage", "describe"]


def disk_usage(path: Path) -> tuple[int, int]:
    """``(bytes allocated on disk, apparent bytes)`` of every file under ``path``.

    Chunks are preallocated sparse files: the allocated size is what the store costs.
    """
    used = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            used += st.st_blocks * 512
            apparent += st.st_size
    return used, apparent


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _reward_entry(entries: tuple[Entry, ...]) -> Entry | None:
    for e in entries:
        if e.role == "next" and e.key[-1] == "reward":
            return e
    return None


def summarize(reader: TrajectoryReader, *, progress: bool = True) -> dict[str, Any]:
    """Everything ``trlrec info`` shows, as a JSON-serialisable dict.

    Returns are sums of the first next-only ``reward`` key over each episode (read one
    column at a time, chunk by chunk); ``return_done`` counts only episodes that ended
    with a done flag.
    """
    entries = reader.shards[0].schema.entries if reader.shards else ()
    reward = _reward_entry(entries)
    lengths, returns, done_returns = [], [], []
    flags = {"done": 0, "cut": 0, "open": 0}
    shard_ends = {s.name: {"done": 0, "cut": 0, "open": 0} for s in reader.shards}
    with Progress("reading episodes", reader.num_episodes) as bar:
        for i in range(reader.num_episodes):
            info = reader.episode_info(i)
            lengths.append(info["num_steps"])
            f = info["flags"]
            flags["done"] += bool(f & FLAG_DONE)
            flags["cut"] += bool(f & FLAG_CUT)
            flags["open"] += bool(f & FLAG_OPEN)
            ends = shard_ends[info["shard"]]
            ends["done"] += bool(f & FLAG_DONE)
            ends["cut"] += bool(f & FLAG_CUT)
            ends["open"] += bool(f & FLAG_OPEN)
            if reward is not None:
                total = sum(
                    float(p.to(torch.float64).sum()) for p in episode_column(reader, i, reward)
                )
                returns.append(total)
                if f & FLAG_DONE:
                    done_returns.append(total)
            if progress:
                bar.update(i + 1)
    used, apparent = disk_usage(reader.path)
    sizes: dict[tuple[str, ...], list[int]] = {e.stored_key: [0, 0] for e in entries}
    for shard in reader.shards:
        for e, disk, raw in shard.column_usage():
            size = sizes.setdefault(e.stored_key, [0, 0])
            size[0] += disk
            size[1] += raw
    return {
        "path": str(reader.path),
        "format_version": reader.format_version,
        "steps": reader.num_steps,
        "episodes": reader.num_episodes,
        "episode_ends": flags,
        "length": _stats([float(x) for x in lengths]),
        "reward_key": key_name(reward.stored_key) if reward is not None else None,
        "return": _stats(returns),
        "return_done": _stats(done_returns),
        "keys": [
            {
                "key": key_name(e.stored_key),
                "role": e.role,
                "shape": list(e.shape),
                "dtype": dtype_name(e.dtype),
                "bytes_on_disk": sizes[e.stored_key][0],
                "bytes_raw": sizes[e.stored_key][1],
                "ratio": sizes[e.stored_key][1] / max(1, sizes[e.stored_key][0]),
            }
            for e in entries
        ],
        "metadata": reader.metadata,
        "bytes_on_disk": used,
        "bytes_apparent": apparent,
        "shards": [
            {
                "name": s.name,
                "steps": s.num_steps,
                "episodes": s.num_episodes,
                "streams": len(s.streams),
                "batch_shape": list(s.schema.batch_shape),
                "chunk_rows": s.chunk_rows,
                "metadata": s.metadata,
                "worker": worker_label(s.written_by),
                "episode_ends": shard_ends[s.name],
            }
            for s in reader.shards
        ],
        "workers": _workers(reader, shard_ends),
    }


def _workers(reader: TrajectoryReader, shard_ends: dict[str, dict[str, int]]) -> list[dict]:
    """The shards grouped by the process that wrote them (shard.json's host, pid, rank)."""
    out: dict[str, dict[str, Any]] = {}
    for s in reader.shards:
        label = worker_label(s.written_by)
        w = out.setdefault(
            label,
            {"worker": label, **s.written_by, "shards": [], "steps": 0, "episodes": 0,
             "episode_ends": {"done": 0, "cut": 0, "open": 0}},
        )  # fmt: skip
        w["shards"].append(s.name)
        w["steps"] += s.num_steps
        w["episodes"] += s.num_episodes
        for k, v in shard_ends[s.name].items():
            w["episode_ends"][k] += v
    return list(out.values())


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt_stats(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    return f"mean {s['mean']:.4g}  min {s['min']:.4g}  max {s['max']:.4g}"


def describe(summary: dict[str, Any]) -> str:
    """The human-readable text of ``trlrec info``."""
    import json

    ends = summary["episode_ends"]
    lines = [
        f"store      {summary['path']}",
        f"format     trlrec v{summary['format_version']}",
        f"steps      {summary['steps']}",
        f"episodes   {summary['episodes']} ({ends['done']} done, {ends['cut']} cut, "
        f"{ends['open']} open)",
        f"length     {_fmt_stats(summary['length'])}",
    ]
    if summary["reward_key"] is not None:
        lines.append(f"return     {_fmt_stats(summary['return'])}  ({summary['reward_key']})")
        lines.append(f"  done eps {_fmt_stats(summary['return_done'])}")
    lines.append(
        f"size       {_size(summary['bytes_on_disk'])} on disk "
        f"({_size(summary['bytes_apparent'])} apparent)"
    )
    lines.append("keys")
    width = max([len(k["key"]) for k in summary["keys"]] + [3])
    for k in summary["keys"]:
        shape = "(" + ", ".join(str(d) for d in k["shape"]) + ("," if len(k["shape"]) == 1 else "")
        lines.append(
            f"  {k['key']:<{width}}  {k['role']:<5}  {shape + ')':<14} {k['dtype']:<9} "
            f"{_size(k['bytes_on_disk'])} on disk, {_size(k['bytes_raw'])} raw "
            f"({k['ratio']:.1f}x)"
        )
    lines.append(f"metadata   {json.dumps(summary['metadata'], sort_keys=True)}")
    lines.append("shards")
    for s in summary["shards"]:
        lines.append(
            f"  {s['name']}  {s['steps']} steps  {s['episodes']} episodes  "
            f"{s['streams']} stream(s)  chunk_rows {s['chunk_rows']}"
        )
    lines.append("workers")
    for w in summary["workers"]:
        ends = w["episode_ends"]
        lines.append(
            f"  {w['worker']}  {len(w['shards'])} shard(s)  {w['steps']} steps  "
            f"{w['episodes']} episodes ({ends['done']} done, {ends['cut']} cut, "
            f"{ends['open']} open)"
        )
    return "\n".join(lines)
