"""Who is writing: the host, process and rank a new shard is named after.

Many processes, on one machine or many sharing a filesystem, write shards of one
dataset. A shard's name starts with its writer's identity, so names never collide
across processes or machines (and a listing groups each worker's shards):
``<host>-p<pid>-<index>``, or ``<host>-r<rank>-p<pid>-<index>`` where there is a rank.
The index (6 digits) counts the shards one process made, so its shards sort in the
order it made them; the directory is claimed with an exclusive ``mkdir``, so even a
pid reused on the same host takes the next free index.

The rank is, first found: ``torch.distributed``'s rank (when its process group is
initialised), the Ray actor the process runs (only when ``ray`` is already imported;
trlrec never imports it), ``SLURM_PROCID``, then ``RANK`` (set by ``torchrun``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from trlrec.naming import safe_name

__all__ = ["worker_identity", "shard_prefix"]

_HOST_CHARS = 48  # of the host name kept in a shard's name


def _rank() -> str | None:
    """This process's rank (see the module's docstring), as a short str, or None."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return str(dist.get_rank())
        except (RuntimeError, ValueError):  # a group torn down meanwhile: no rank
            pass
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                actor = ray.get_runtime_context().get_actor_id()
                if actor:
                    return "ray" + str(actor)[:12]
        except (AttributeError, RuntimeError) as err:  # another Ray API: no rank from it
            logging.getLogger(__name__).debug("no Ray actor id for the shard name: %s", err)
    for name in ("SLURM_PROCID", "RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return value
    return None


def worker_identity() -> dict[str, Any]:
    """``{"host", "pid", "rank"}`` of the calling process (``rank`` may be None).

    Examples:
        >>> import os
        >>> worker_identity()["pid"] == os.getpid()
        True
    """
    return {"host": socket.gethostname() or "localhost", "pid": os.getpid(), "rank": _rank()}


def shard_prefix(identity: dict[str, Any] | None = None) -> str:
    """The start of the names of the shards this process makes (a safe file name).

    Examples:
        >>> shard_prefix({"host": "node-1", "pid": 42, "rank": None})
        'node-1-p42'
        >>> shard_prefix({"host": "gpu/7", "pid": 9, "rank": "3"})
        'gpu%2F7-r3-p9'
    """
    ident = worker_identity() if identity is None else identity
    host = safe_name(str(ident["host"]))[:_HOST_CHARS]
    cut = host.rfind("%", len(host) - 2)
    host = host[:cut] if cut >= 0 else host  # never half an escape
    rank = ident.get("rank")
    parts = [host] + ([f"r{safe_name(str(rank))}"] if rank is not None else [])
    return "-".join([*parts, f"p{int(ident['pid'])}"])
