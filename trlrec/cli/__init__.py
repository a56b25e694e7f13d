"""The ``trlrec`` command: record, inspect, film and check stores.

Every failure is one line on stderr and a non-zero exit status (2 for errors,
1 for ``verify`` finding damage, 130 when interrupted), never a traceback. A closed
output pipe (``trlrec info STORE | head``) ends the command quietly with status 141,
as a Unix tool killed by ``SIGPIPE`` would.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence

from trlrec.errors import TrlrecError

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_DAMAGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141

DEFAULT_KEY = "pixels"
"""The frame key: what ``record --pixels`` stores and what ``trlrec video`` reads by default."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trlrec`` command."""
    from trlrec import __version__

    parser = argparse.ArgumentParser(
        prog="trlrec", description="Record TorchRL rollouts to memory-mapped storage and use them."
    )
    parser.add_argument("--version", action="version", version=f"trlrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("record", help="record a Gymnasium env (transitions, optionally a video)")
    p.add_argument("env_id", nargs="?", default="CartPole-v1", help="default: CartPole-v1")
    p.add_argument("--steps", type=int, default=500, help="transitions to record (default 500)")
    p.add_argument("--video", action="store_true", help="also film the run to an mp4")
    p.add_argument(
        "--pixels",
        action="store_true",
        help="also keep the rendered frames in the store under 'pixels' (for `trlrec video`; "
        "CartPole's are 400x600x3: ~720 KB a step)",
    )
    p.add_argument("--out", default="runs", help="parent of the run directory (default ./runs)")
    p.add_argument("--policy", help="module:callable (or file.py:callable); default random")
    p.add_argument("--seed", type=int, help="seed of the env and of torch")
    p.add_argument("--fps", type=float, help="frames per second of the video (with --video)")

    p = sub.add_parser("info", help="summarise a store")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON for machines")

    p = sub.add_parser("video", help="encode frames stored in a store to an mp4 or a GIF")
    p.add_argument("path")
    p.add_argument(
        "--key",
        default=DEFAULT_KEY,
        help=f"frame key (default {DEFAULT_KEY}); next/{DEFAULT_KEY} gives the next frames",
    )
    p.add_argument("--episode", type=int, default=0, help="episode index (default 0; -1: last)")
    p.add_argument("-o", "--output", required=True, help="the file to write: .mp4 (H.264) or .gif")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")

    p = sub.add_parser("verify", help="check a store end to end")
    p.add_argument("path")

    p = sub.add_parser(
        "compact", help="compress a store's committed chunks in place (crash-safe), trim them"
    )
    p.add_argument("path")
    p.add_argument("--codec", default="zstd", help="the codec (default zstd)")
    p.add_argument("--level", type=int, default=3, help="the codec's level (default 3)")
    p.add_argument(
        "--keys", nargs="+", metavar="KEY", help="only these keys (e.g. pixels next/pixels)"
    )

    p = sub.add_parser(
        "merge",
        help="combine stores recorded separately into a new one (data files hard-linked)",
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="SRC... DST: the stores, then the new one"
    )
    p.add_argument("--copy", action="store_true", help="copy the data files instead of linking")

    from trlrec.cli.export import add_parsers

    add_parsers(sub)  # export minari|lerobot, import minari
    return parser


def _cmd_record(args: argparse.Namespace) -> int:
    from trlrec.cli.record import record
    from trlrec.cli.stats import summarize
    from trlrec.storage.reader import TrajectoryReader

    result = record(
        args.env_id,
        steps=args.steps,
        out=args.out,
        video=args.video,
        pixels=args.pixels,
        policy=args.policy,
        seed=args.seed,
        fps=args.fps,
    )
    summary = summarize(TrajectoryReader(result.dataset))
    ret = summary["return_done"] or summary["return"]
    done = summary["episode_ends"]["done"]
    print(f"recorded {result.steps} steps, {result.episodes} episodes of {args.env_id}")
    if ret is not None:
        which = f"{done} finished episodes" if summary["return_done"] else "all episodes"
        print(f"mean return {ret['mean']:.4g} over {which}")
    print(f"dataset    {result.dataset}")
    for v in result.videos:
        print(f"video      {v}")
    if result.interrupted:
        print(
            f"trlrec record: interrupted: {result.steps} steps ({result.episodes} episodes) "
            f"kept in {result.dataset}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from trlrec.cli.stats import describe, summarize
    from trlrec.storage.reader import TrajectoryReader

    summary = summarize(TrajectoryReader(args.path))
    print(json.dumps(summary, indent=2, sort_keys=True) if args.json else describe(summary))
    return EXIT_OK


def _cmd_video(args: argparse.Namespace) -> int:
    from trlrec.cli.video import export_video

    path, frames = export_video(
        args.path, args.output, key=args.key, episode=args.episode, fps=args.fps
    )
    print(f"wrote {frames} frames to {path}")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from trlrec.cli.verify import DAMAGED, UNCOMMITTED, verify_store

    report = verify_store(args.path)
    if report.ok:
        print(
            f"OK {report.path}: {report.shards} shard(s), {report.episodes} episodes, "
            f"{report.steps} steps, {report.files} chunk files checked"
        )
    else:
        print(f"DAMAGED {report.path}: {len(report.problems)} problem(s)")
        for problem in report.problems:
            print(f"  {problem}")
    for s in report.shard_checks:
        if s.state == DAMAGED:
            print(f"  shard {s.name}: DAMAGED, {len(s.problems)} problem(s)")
        elif s.state == UNCOMMITTED:
            print(f"  shard {s.name}: never committed (its writer has not committed; empty)")
        else:
            print(f"  shard {s.name}: OK, {s.episodes} episodes, {s.steps} steps")
    for worker, checks in report.by_worker().items():
        damaged = sum(s.state == DAMAGED for s in checks)
        state = f"DAMAGED ({damaged} shard(s))" if damaged else "OK"
        print(
            f"  worker {worker}: {state}, {len(checks)} shard(s), "
            f"{sum(s.episodes for s in checks)} episodes, {sum(s.steps for s in checks)} steps"
        )
    return EXIT_OK if report.ok else EXIT_DAMAGED


def _cmd_compact(args: argparse.Namespace) -> int:
    from trlrec.cli.compact import compact_store
    from trlrec.cli.stats import _size

    report = compact_store(args.path, codec=args.codec, level=args.level, keys=args.keys)
    ratio = report.before / max(1, report.after)
    print(
        f"compacted {args.path}: "
        f"{report.compressed} column files compressed in {report.shards} shard(s); "
        f"{_size(report.before)} on disk before, {_size(report.after)} after ({ratio:.1f}x)"
    )
    return EXIT_OK


def _cmd_merge(args: argparse.Namespace) -> int:
    from trlrec.errors import ConfigError
    from trlrec.storage.merge import merge_stores

    if len(args.paths) < 2:
        raise ConfigError("merge takes SRC... DST: at least one store and the new store's path")
    *sources, dest = args.paths
    result = merge_stores(sources, dest, copy=args.copy)
    mib = 2**20
    print(
        f"merged {len(result.shards)} shard(s) of {len(sources)} store(s) into {result.path}: "
        f"{result.linked} data file(s) linked ({result.bytes_linked / mib:.1f} MiB), "
        f"{result.copied} copied ({result.bytes_copied / mib:.1f} MiB)"
    )
    for skipped in result.skipped:
        print(f"  left out {skipped}: never committed (empty)")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from trlrec.cli.export import run_export

    return run_export(args)


def _cmd_import(args: argparse.Namespace) -> int:
    from trlrec.cli.export import run_import

    return run_import(args)


_COMMANDS = {
    "record": _cmd_record,
    "info": _cmd_info,
    "video": _cmd_video,
    "verify": _cmd_verify,
    "compact": _cmd_compact,
    "merge": _cmd_merge,
    "export": _cmd_export,
    "import": _cmd_import,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trlrec`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print(f"trlrec {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (TrlrecError, IndexError, OSError) as err:
        kind = "" if isinstance(err, TrlrecError) else f"{type(err).__name__}: "
        text = " ".join([str(err), *getattr(err, "__notes__", ())])
        message = " ".join(text.split()) or type(err).__name__
        print(f"trlrec {args.command}: error: {kind}{message}", file=sys.stderr)
        return EXIT_ERROR


def _closed_pipe() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as ``SIGPIPE`` would."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):  # captured in-process: no descriptor
        return EXIT_PIPE
    # what is still buffered has nowhere to go: keep the flush at exit from failing again
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EXIT_PIPE
