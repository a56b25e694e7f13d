"""``trlrec export minari|lerobot`` and ``trlrec import minari``: exporters on the command line."""

from __future__ import annotations

import argparse
from typing import Any

from trlrec.export.result import ExportResult

__all__ = ["add_parsers", "run_export", "run_import"]


def add_parsers(sub: Any) -> None:
    """Add the ``export`` and ``import`` commands to the ``trlrec`` parser's subparsers."""
    p = sub.add_parser("export", help="write a store as a Minari or LeRobot dataset")
    to = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    m = to.add_parser("minari", help="a local Minari dataset (minari.load_dataset opens it)")
    m.add_argument("store")
    m.add_argument("dataset_id", help="Minari id, [namespace/]name-v<N>")
    m.add_argument("--env", help="Gymnasium id of the recorded env (for recover_environment)")
    m.add_argument("--jpeg", action="store_true", help="JPEG images (smaller, lossy)")
    m.add_argument("--author", help="the dataset's author")
    m.add_argument("--description", help="the dataset's description")
    lr = to.add_parser("lerobot", help="a LeRobot v3.0 dataset directory")
    lr.add_argument("store")
    lr.add_argument("dir", help="the dataset directory to create")
    lr.add_argument("--fps", type=int, default=30, help="frame rate (default 30)")
    lr.add_argument("--task", help="the task description of the episodes")
    lr.add_argument("--robot-type", help="LeRobot's robot_type")
    lr.add_argument(
        "--crf", type=int, default=18, help="H.264 quality of videos (0 best, 51 worst)"
    )

    p = sub.add_parser("import", help="make a store of a Minari dataset")
    frm = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    m = frm.add_parser("minari", help="a local Minari dataset")
    m.add_argument("dataset_id")
    m.add_argument("store", help="the store to write")


def _report(result: ExportResult, what: str) -> None:
    print(f"wrote {result.episodes} episodes, {result.steps} steps to {what}")
    print(f"path       {result.path}")
    for note in result.notes:
        print(f"note       {note}")
    if not result.notes:
        print("note       exact copy: nothing was lost")


def run_export(args: argparse.Namespace) -> int:
    """Run ``trlrec export FORMAT ...``; return the exit code."""
    if args.format == "minari":
        from trlrec.export.minari import to_minari

        result = to_minari(
            args.store,
            args.dataset_id,
            env=args.env,
            jpeg=args.jpeg,
            author=args.author,
            description=args.description,
        )
        _report(result, f"Minari dataset {args.dataset_id}")
    else:
        from trlrec.export.lerobot import to_lerobot

        result = to_lerobot(
            args.store,
            args.dir,
            fps=args.fps,
            task=args.task,
            robot_type=args.robot_type,
            crf=args.crf,
        )
        _report(result, "LeRobot v3.0 dataset")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Run ``trlrec import minari DATASET_ID STORE``; return the exit code."""
    from trlrec.export.minari import from_minari

    result = from_minari(args.dataset_id, args.store)
    _report(result, "store")
    return 0
