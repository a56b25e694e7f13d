"""Fault-injection worker for the reliability tests: deterministic rollouts and a fork server.

This file is imported by the tests (for :func:`rollout` and :func:`check_store`) and
also runs as a standalone script (``python _worker.py``): it must never import
anything from ``tests/``. As a script it is a small server that imports torch and
trlrec once, then answers JSON commands (one per line on stdin, one JSON reply per
line on stdout) by forking children that record, get killed, or probe stores.
Forking keeps each iteration at a few milliseconds instead of seconds of imports.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

# ----------------------------------------------------------------------------- rollouts


def rollout(
    num_envs: int = 0,
    steps: int = 50,
    lengths: tuple[int, ...] = (5,),
    obs_shape: tuple[int, ...] = (4,),
    pixels: tuple[int, ...] | None = None,
) -> TensorDict:
    """A deterministic rollout, as ``env.rollout(steps, break_when_any_done=False)`` gives.

    Same observation formula as ``tests/conftest.py``'s ``StubEnv`` (sub-env ``b``,
    episode ``e``, step ``t``: ``b * 1000 + e * 100 + t + arange / 8``), with a
    deterministic action ``(b + k) % 3`` at global step ``k``. ``num_envs=0`` gives an
    unbatched ``[T]`` rollout, otherwise ``[B, T]``.
    """
    n = max(1, num_envs)
    numel = int(torch.Size(obs_shape).numel())
    b = torch.arange(n)[:, None]
    k = torch.arange(steps)[None, :]
    lens = torch.tensor([lengths[i % len(lengths)] for i in range(n)])[:, None]
    # Auto-reset right after done: each episode spans `len` transitions.
    e, t = k // lens, k % lens
    t_next = t + 1
    done_next = t_next >= lens

    def obs(ep: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        base = (b * 1000 + ep * 100 + tt).to(torch.float64)
        o = base[..., None] + torch.arange(numel, dtype=torch.float64) / 8
        return o.reshape(n, steps, *obs_shape).to(torch.float32)

    def pix(ep: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        npix = int(torch.Size(pixels).numel())
        base = b * 1000 + ep * 100 + tt
        p = (base[..., None] * 7 + torch.arange(npix)) % 251
        return p.to(torch.uint8).reshape(n, steps, *pixels)

    action = ((b + k) % 3).expand(n, steps)[..., None]
    false = torch.zeros(n, steps, 1, dtype=torch.bool)
    root: dict[str, Any] = {
        "observation": obs(e, t),
        "action": action.clone(),
        "done": false.clone(),
        "terminated": false.clone(),
        "truncated": false.clone(),
    }
    nxt: dict[str, Any] = {
        "observation": obs(e, t_next),
        "reward": (action.to(torch.float32) + t_next[..., None].to(torch.float32) / 10),
        "done": done_next[..., None].clone(),
        "terminated": done_next[..., None].clone(),
        "truncated": false.clone(),
    }
    if pixels is not None:
        root["pixels"] = pix(e, t)
        nxt["pixels"] = pix(e, t_next)
    td = TensorDict({**root, "next": TensorDict(nxt, [n, steps])}, [n, steps])
    return td[0] if num_envs == 0 else td


def bits(t: torch.Tensor) -> torch.Tensor:
    """Same-width integer view for bit-exact comparisons (NaN payloads, -0.0)."""
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(width)


def same(a: TensorDict, b: TensorDict) -> str | None:
    """None when ``a`` and ``b`` hold the same keys with bit-identical values, else why not."""
    ka = set(a.keys(True, True))
    kb = set(b.keys(True, True))
    if ka != kb:
        return f"keys differ: {sorted(map(str, ka ^ kb))}"
    for key in ka:
        x, y = a.get(key), b.get(key)
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{key}: {tuple(x.shape)} {x.dtype} != {tuple(y.shape)} {y.dtype}"
        if not torch.equal(bits(x), bits(y)):
            return f"{key}: values differ"
    return None


def check_store(path: str, expected: TensorDict, num_envs: int) -> dict[str, Any]:
    """Check every committed episode of ``path`` against the rollout ``expected``.

    The episodes of each stream must tile its transitions ``[0, n)`` without gaps or
    overlaps, each bit-identical to ``expected[b, first:first + T]``. Returns the
    per-stream transition counts and the episode count.
    """
    from trlrec.storage.reader import TrajectoryReader

    r = TrajectoryReader(path)
    exp = expected if num_envs else expected[None]
    per_stream: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for i in range(r.num_episodes):
        info = r.episode_info(i)
        ep = r.episodes[i]
        first, steps = info["first_transition"], info["num_steps"]
        assert ep.batch_size == torch.Size([steps]), (i, info, ep.batch_size)
        want = exp[info["stream"], first : first + steps]
        why = same(ep, want)
        assert why is None, f"episode {i} {dict(info)}: {why}"
        per_stream.setdefault((info["shard"], info["stream"]), []).append((first, steps))
    counts = {}
    for key, spans in per_stream.items():
        spans.sort()
        pos = 0
        for first, steps in spans:
            assert first == pos, f"stream {key}: episode at {first}, expected {pos} ({spans})"
            pos += steps
        counts[f"{key[0]}/{key[1]}"] = pos
    total = sum(counts.values())
    assert total == r.num_steps, (total, r.num_steps, counts)
    return {"counts": counts, "episodes": r.num_episodes, "steps": r.num_steps}


# ----------------------------------------------------------------------------- recording


def record(cfg: dict[str, Any], ack_fd: int | None = None) -> None:
    """Record ``cfg``'s rollout; after each step known committed, write its count to ``ack_fd``.

    ``cfg``: num_envs, steps, lengths, obs_shape, pixels (rollout); path, shard,
    chunk_rows, commit_every_steps, durable (writer); mode ("append" | "extend"),
    block (extend block length), flush_every, start (first rollout step), sleep, idle
    (seconds to wait without a call before closing), io, commit_on_done,
    min_commit_interval, commit_every_seconds, compression.
    """
    from trlrec.storage.writer import TrajectoryWriter

    roll = rollout(
        cfg.get("num_envs", 0),
        cfg["steps"],
        tuple(cfg.get("lengths", (5,))),
        tuple(cfg.get("obs_shape", (4,))),
        tuple(cfg["pixels"]) if cfg.get("pixels") else None,
    )
    batched = cfg.get("num_envs", 0) > 0
    w = TrajectoryWriter(
        cfg["path"],
        shard=cfg.get("shard"),
        chunk_rows=cfg.get("chunk_rows"),
        commit_every_steps=cfg.get("commit_every_steps", 1024),
        commit_every_seconds=cfg.get("commit_every_seconds", 3600.0),
        durable=cfg.get("durable", False),
        stage_steps=cfg.get("stage_steps"),
        commit_on_done=cfg.get("commit_on_done", True),
        min_commit_interval=cfg.get("min_commit_interval", 0.2),
        io=cfg.get("io"),
        compression=cfg.get("compression"),
    )
    flush_every = cfg.get("flush_every", 0)
    start, stop = cfg.get("start", 0), cfg["steps"]
    block = cfg.get("block", 1)
    t = start
    while t < stop:
        # Only a returned flush() acknowledges steps: commits made by commit_every_steps
        # may run on the writer's background thread.
        acked = False
        if cfg.get("mode", "append") == "append":
            w.append(roll[:, t] if batched else roll[t])
            t += 1
        else:
            t1 = min(stop, t + block)
            w.extend(roll[:, t:t1] if batched else roll[t:t1])
            t = t1
        if flush_every and (t - start) % flush_every == 0:
            w.flush()
            acked = True
        if acked and ack_fd is not None:
            os.write(ack_fd, f"{t}\n".encode())
        if cfg.get("sleep"):
            time.sleep(cfg["sleep"])
    if cfg.get("idle"):  # no more calls: only the writer's own clock may commit now
        if ack_fd is not None:
            os.write(ack_fd, b"idle\n")
        time.sleep(cfg["idle"])
    w.close()
    if ack_fd is not None:
        os.write(ack_fd, f"{t}\nclosed\n".encode())


# ----------------------------------------------------------------------------- faults


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_crashpoint(target: str, nth: int, when: str) -> None:
    """SIGKILL this process at the ``nth`` call of ``target``, ``before`` or ``after`` it runs.

    The recording takes the inline I/O backend, so every step runs in this thread.
    Targets are the steps of the commit protocol: ``chunk`` (creating a chunk),
    ``write_rows`` (copying rows into a chunk), ``append`` (appending to an index
    file), ``replace`` (the rename of an atomic JSON write, COMMIT included),
    ``link`` (publishing dataset.json), ``fsync``.
    """
    from trlrec.io import inline
    from trlrec.storage import chunks

    calls = {"n": 0}

    def wrap(fn):
        def inner(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == nth and when == "before":
                _kill_self()
            out = fn(*args, **kwargs)
            if calls["n"] == nth and when == "after":
                _kill_self()
            return out

        return inner

    if target == "chunk":
        chunks.ChunkSeries._chunk = wrap(chunks.ChunkSeries._chunk)
    elif target == "write_rows":
        chunks.ChunkSeries.write = wrap(chunks.ChunkSeries.write)
    elif target == "append":  # the index appends, as the inline I/O backend writes them
        real = inline.InlineBackend._do_write
        counted = wrap(real)

        def index_write(self, path, data, offset, keep):
            if path.endswith(("episodes.bin", "episode_meta.jsonl")):
                return counted(self, path, data, offset, keep)
            return real(self, path, data, offset, keep)

        inline.InlineBackend._do_write = index_write
    elif target == "replace":
        os.replace = wrap(os.replace)
    elif target == "link":
        os.link = wrap(os.link)
    elif target == "fsync":
        os.fsync = wrap(os.fsync)
    else:
        raise ValueError(target)


def _read_acks(fd: int) -> tuple[int, bool]:
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    lines = data.decode().split()
    closed = "closed" in lines
    nums = [int(x) for x in lines if x.isdigit()]
    return (max(nums) if nums else 0), closed


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def in_child(fn) -> str:
    """Run ``fn`` in a forked child; the str it returns comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn()
        except BaseException as err:  # reported to the test
            out = f"unexpected {type(err).__name__}: {err}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def _fork(child, timeout: float | None = None, kill_after: float | None = None) -> dict:
    """Run ``child(ack_fd)`` in a forked process; SIGKILL it after ``kill_after`` seconds."""
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 0
        try:
            child(wfd)
        except BaseException:
            os.write(wfd, ("\nEXC " + traceback.format_exc()).encode())
            code = 3
        os._exit(code)
    os.close(wfd)
    os.set_blocking(rfd, False)
    deadline = time.monotonic() + (kill_after if kill_after is not None else timeout or 60)
    killed = False
    data = b""
    while True:
        data += _drain(rfd)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            killed = kill_after is not None
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.0005)
    data += _drain(rfd)
    os.close(rfd)
    text = data.decode(errors="replace")
    body, _, exc = text.partition("\nEXC ")
    lines = body.split()
    acked = max([int(x) for x in lines if x.isdigit()], default=0)
    return {
        "acked": acked,
        "closed": "closed" in lines,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "killed_by_us": killed,
        "exc": exc or None,
        "out": body,
    }


def probe(path: str) -> dict[str, Any]:
    """Open a store and read everything it claims to hold, touching every byte."""
    from trlrec.errors import TrlrecError
    from trlrec.storage.reader import TrajectoryReader

    try:
        r = TrajectoryReader(path)
        total = 0
        for i in range(r.num_episodes):
            r.episode_info(i)
            r.episode_metadata(i)
            ep = r.episodes[i]
            for v in ep.values(True, True):
                total += int(bits(v).to(torch.int64).sum()) & 0xFF
        r.refresh()
        return {"status": "ok", "episodes": r.num_episodes, "steps": r.num_steps}
    except TrlrecError as err:
        return {"status": "error", "type": type(err).__name__, "trlrec": True, "msg": str(err)}
    except BaseException as err:
        return {
            "status": "error",
            "type": type(err).__name__,
            "trlrec": False,
            "msg": f"{err}\n{traceback.format_exc()}",
        }


def _limit_memory(extra_bytes: int) -> None:
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, vm + extra_bytes))


# ----------------------------------------------------------------------------- namespaces

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def enter_mount_namespace() -> None:
    """Get a private mount namespace (as root, or via a user namespace) in a forked child."""
    uid, gid = os.getuid(), os.getgid()
    try:
        _libc_call("unshare", _CLONE_NEWNS)
    except OSError:
        _libc_call("unshare", _CLONE_NEWUSER | _CLONE_NEWNS)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    _libc_call("mount", None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None)


def mount_tmpfs(path: str, size: str) -> None:
    """Mount a small tmpfs at ``path`` (in the current mount namespace)."""
    opts = f"size={size}".encode()
    _libc_call("mount", b"tmpfs", path.encode(), b"tmpfs", ctypes.c_ulong(0), opts)


def bind_readonly(path: str) -> None:
    """Make ``path`` a read-only bind mount of itself."""
    p = path.encode()
    _libc_call("mount", p, p, None, ctypes.c_ulong(_MS_BIND), None)
    flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY
    _libc_call("mount", None, p, None, ctypes.c_ulong(flags), None)


# ----------------------------------------------------------------------------- scenarios


def _describe(err: BaseException) -> list[Any]:
    from trlrec.errors import StoreWriteError, TrlrecError

    return [
        type(err).__name__,
        str(err) if isinstance(err, TrlrecError) else f"{err}\n{traceback.format_exc()}",
        isinstance(err, StoreWriteError),
    ]


def faulty_session(cfg: dict[str, Any], set_limit, lift_limit) -> dict[str, Any]:
    """Record until the disk refuses, then check what survived and that recording resumes.

    1. A closed shard is recorded (``warmup`` steps) while there is room.
    2. ``set_limit()``; a writer on shard ``lim`` appends until it gets an error.
    3. With ``retry``, room comes back first and the *same* writer is closed (its
       commit must then be exact); otherwise it is closed while the disk is still full.
    4. ``lift_limit()``; a new shard and a continuation of ``lim`` are recorded.
    5. Every committed episode is checked against the rollout.
    """
    from trlrec.storage.reader import TrajectoryReader
    from trlrec.storage.writer import TrajectoryWriter

    out: dict[str, Any] = {}
    roll = rollout(0, cfg["steps"], obs_shape=tuple(cfg.get("obs_shape", (4,))))
    record(dict(cfg, steps=cfg["warmup"], shard="shard-000000"))
    out["before"] = TrajectoryReader(cfg["path"]).num_steps
    set_limit()
    acked, w = 0, None
    try:
        w = TrajectoryWriter(
            cfg["path"],
            shard="lim",
            chunk_rows=cfg.get("chunk_rows"),
            commit_every_steps=cfg.get("commit_every_steps", 1),
        )
        for t in range(cfg["steps"]):
            w.append(roll[t])
            if (t + 1) % 5 == 0:
                w.flush()
                acked = t + 1
        out["error"] = None
    except Exception as err:
        out["error"] = _describe(err)
    out["acked"] = acked
    if cfg.get("retry"):
        lift_limit()
    if w is not None:
        try:
            w.close()
            out["close"] = "ok"
        except Exception as err:
            out["close"] = _describe(err)
    lift_limit()
    out["check_after_error"] = _safe(lambda: check_store(cfg["path"], roll, 0))
    try:
        record(dict(cfg, steps=7))  # a new shard
        lim = TrajectoryReader(cfg["path"])
        done = [lim.episode_info(i) for i in range(lim.num_episodes)]
        n = sum(i["num_steps"] for i in done if i["shard"] == "lim")
        record(dict(cfg, shard="lim", start=n, steps=min(cfg["steps"], n + 9)))
        out["resume"] = "ok"
    except Exception as err:
        out["resume"] = _describe(err)
    out["check_final"] = _safe(lambda: check_store(cfg["path"], roll, 0))
    return out


def _fsize_child(cfg: dict[str, Any], wfd: int) -> None:
    """A recording that hits RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    inf = resource.RLIM_INFINITY
    out = faulty_session(
        cfg,
        lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["limit"], inf)),
        lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (inf, inf)),
    )
    os.write(wfd, ("\nRESULT " + json.dumps(out) + "\n").encode())


def _fill(path: str, leave: int) -> None:
    """Fill the filesystem of ``path`` until about ``leave`` bytes are free."""
    st = os.statvfs(os.path.dirname(path))
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def _fs_child(cfg: dict[str, Any], wfd: int) -> None:
    """Run a scenario on a tiny tmpfs or a read-only bind mount in a private mount namespace."""
    from trlrec.errors import TrlrecError
    from trlrec.storage.writer import TrajectoryWriter

    try:
        enter_mount_namespace()
    except OSError as err:
        os.write(wfd, ("\nRESULT " + json.dumps({"skip": str(err)}) + "\n").encode())
        return
    out: dict[str, Any] = {}
    if cfg["kind"] == "full":
        mount_tmpfs(cfg["mount"], cfg["size"])
        filler = os.path.join(cfg["mount"], "filler")
        out = faulty_session(
            cfg,
            lambda: _fill(filler, cfg["leave"]),
            lambda: os.path.exists(filler) and os.remove(filler),
        )
    elif cfg["kind"] == "logger_full":
        out = _logger_full(cfg)
    elif cfg["kind"] == "readonly":
        bind_readonly(cfg["mount"])
        results = {}
        for name, fn in (
            ("new_store", lambda: TrajectoryWriter(os.path.join(cfg["mount"], "new"))),
            ("existing_store", lambda: TrajectoryWriter(cfg["path"])),
            ("existing_shard", lambda: TrajectoryWriter(cfg["path"], shard="shard-000000")),
        ):
            try:
                w = fn()
                w.close()
                results[name] = ["no error", "", False]
            except TrlrecError as err:
                results[name] = _describe(err)
            except BaseException as err:
                results[name] = _describe(err)
        out["writers"] = results
        out["probe"] = probe(cfg["path"])
    os.write(wfd, ("\nRESULT " + json.dumps(out) + "\n").encode())


def _logger_full(cfg: dict[str, Any]) -> dict[str, Any]:
    """``dump()`` to a CSV logger whose directory (a tiny tmpfs) fills up; then room again."""
    from trlrec import TensorDictRecorder
    from trlrec.loggers import CSVLogger

    mount_tmpfs(cfg["mount"], "256k")
    logger = CSVLogger("exp", log_dir=cfg["mount"])
    rec = TensorDictRecorder(cfg["path"], logger=logger)
    td = rollout(steps=40, lengths=(5,))
    rec.extend(td)
    filler = os.path.join(cfg["mount"], "filler")
    _fill(filler, 0)
    out: dict[str, Any] = {}
    try:
        rec.dump()
        out["error"] = None
    except BaseException as err:
        out["error"] = [type(err).__name__, str(err), isinstance(err, OSError), err.errno]
    out["probe_after_error"] = probe(cfg["path"])
    os.remove(filler)
    rec.extend(rollout(steps=10, lengths=(5,)))
    rec.dump()
    rec.close()
    out["probe_final"] = probe(cfg["path"])
    scalars = os.path.join(cfg["mount"], "exp", "scalars", "trajectories", "episode_return.csv")
    out["logged_after_room"] = Path(scalars).read_text() if os.path.exists(scalars) else None
    return out


def _safe(fn) -> Any:
    try:
        return fn()
    except BaseException as err:
        return f"{type(err).__name__}: {err}"


def handle(cmd: dict[str, Any]) -> dict[str, Any]:
    """Answer one command of the server."""
    op = cmd["op"]
    if op == "kill_at":  # record, SIGKILL after `delay` seconds
        return _fork(lambda fd: record(cmd["cfg"], fd), kill_after=cmd["delay"])
    if op == "compact_at":  # compact a store, SIGKILL after `delay` seconds

        def compact(fd: int) -> None:
            from trlrec.cli.compact import compact_store

            compact_store(cmd["path"], progress=False)
            os.write(fd, b"compacted\n")

        return _fork(compact, kill_after=cmd["delay"])
    if op == "crashpoint":  # record, SIGKILL at the nth call of a protocol step
        cfg = cmd["cfg"]

        def child(fd: int) -> None:
            install_crashpoint(cmd["target"], cmd["nth"], cmd["when"])
            record(dict(cfg, io="inline"), fd)

        return _fork(child, timeout=60)
    if op == "probe":  # open and read stores, each in a child with bounded memory and time
        results = []
        for path in cmd["paths"]:

            def child(fd: int, path: str = path) -> None:
                _limit_memory(cmd.get("memory", 2**30))
                os.write(fd, ("\nRESULT " + json.dumps(probe(path)) + "\n").encode())

            res = _fork(child, timeout=cmd.get("timeout", 20))
            got = _result(res)
            if got is None:
                got = {"status": "crash", "signal": res["signal"], "detail": res}
            got["path"] = path
            results.append(got)
        return {"results": results}
    if op == "fsize":
        res = _fork(lambda fd: _fsize_child(cmd["cfg"], fd), timeout=60)
        return {"result": _result(res), "raw": res}
    if op == "fs":
        res = _fork(lambda fd: _fs_child(cmd["cfg"], fd), timeout=60)
        return {"result": _result(res), "raw": res}
    if op == "spawn":  # start a slow recorder and return at once
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            try:
                record(cmd["cfg"], wfd)
                os._exit(0)
            except BaseException:
                os.write(wfd, ("\nEXC " + traceback.format_exc()).encode())
                os._exit(3)
        os.close(wfd)
        _SPAWNED[pid] = rfd
        return {"pid": pid}
    if op == "reap":
        pid = cmd["pid"]
        _, status = os.waitpid(pid, 0)
        rfd = _SPAWNED.pop(pid)
        acked, _closed = _read_acks(rfd)
        os.close(rfd)
        return {"code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, "acked": acked}
    if op == "ping":
        return {"pid": os.getpid()}
    raise ValueError(f"unknown op {op!r}")


_SPAWNED: dict[int, int] = {}


def _result(res: dict[str, Any]) -> dict[str, Any] | None:
    for line in res["out"].splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return None


def serve() -> None:
    """Answer JSON commands from stdin until it closes."""
    torch.set_num_threads(1)
    import trlrec.storage.reader
    import trlrec.storage.writer  # noqa: F401  (import once, before forking)

    random.seed(0)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the reply channel
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = {"ok": True, **handle(json.loads(line))}
        except BaseException:
            reply = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
