"""The video spool under kills and hostile files (issue 18): numbering, delivery, sidecars."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from tensordict import TensorDict

from trlrec import VideoRecorder
from trlrec.video.spool import Spool

H = W = 8


class FileLogger:
    """Appends one JSON line per delivered video: it survives the process (a kill)."""

    def __init__(self, path: Path, die_after: bool = False) -> None:
        self.path, self.die_after = path, die_after

    def log_video(self, name, video, step=None, **kwargs):
        with open(self.path, "a") as f:
            f.write(json.dumps([name, step, int(video.shape[1]), int(video[0, 0, 0, 0, 0])]) + "\n")
        if self.die_after:
            os._exit(0)  # killed inside log_video, after the logger wrote the video

    def sent(self) -> list[list]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def _frames(vr: VideoRecorder, n: int, value: int = 7) -> None:
    for _ in range(n):
        vr(TensorDict(pixels=torch.full((H, W, 3), value, dtype=torch.uint8), batch_size=[]))


def _in_child(fn) -> None:
    """Run ``fn`` in a forked child that ends with ``os._exit`` (a kill: no cleanup)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status


def test_kill_while_updating_the_step_counter_does_not_restart_numbering(tmp_path):
    spool = Spool(tmp_path, "clip")
    assert [spool.next_step("clip"), spool.next_step("clip")] == [0, 1]

    def killed_mid_update():
        def die(*args):
            os._exit(0)

        os.write = die  # killed before the new value lands (after the truncation, if any)
        os.pwrite = die
        spool.next_step("clip")

    _in_child(killed_mid_update)
    assert spool.next_step("clip") == 2  # not 0: videos/clip_0 is never written again
    assert Spool(tmp_path, "clip").next_step("clip", 1) == 3


def test_kill_right_after_log_video_returned_does_not_send_again(tmp_path):
    logger = FileLogger(tmp_path / "sent.jsonl")
    spool = tmp_path / "spool"

    def record_and_die_on_cleanup():
        vr = VideoRecorder(logger, "clip", spool_dir=spool)
        _frames(vr, 5)
        real_unlink = Path.unlink

        def die(self, *args, **kwargs):
            if self.suffix == ".frames":
                os._exit(0)  # killed after log_video returned, before the files were removed
            return real_unlink(self, *args, **kwargs)

        Path.unlink = die
        vr.dump()

    _in_child(record_and_die_on_cleanup)
    assert len(logger.sent()) == 1
    vr = VideoRecorder(logger, "clip", spool_dir=spool)
    vr.dump()
    vr.close()
    assert len(logger.sent()) == 1  # exactly once
    assert not list(spool.glob("*.video.json"))
    assert not list(spool.glob("*.frames"))


def test_kill_inside_log_video_sends_again_under_the_same_name_and_step(tmp_path):
    """At-least-once: the re-send rewrites that video (same name and step), no other one."""
    spool = tmp_path / "spool"

    def record_and_die_in_logger():
        vr = VideoRecorder(FileLogger(tmp_path / "sent.jsonl", die_after=True), "clip",
                           spool_dir=spool)  # fmt: skip
        _frames(vr, 5)
        vr.dump()

    _in_child(record_and_die_in_logger)
    logger = FileLogger(tmp_path / "sent.jsonl")
    vr = VideoRecorder(logger, "clip", spool_dir=spool)
    _frames(vr, 3, value=9)  # this recorder's own video comes after, at a later step
    vr.dump()
    vr.close()
    first, again, own = logger.sent()
    assert again == first == ["clip", 5, 5, 7]  # logged at the frame count
    assert own[0] == "clip"
    assert own[1] > first[1]
    assert own[2:] == [3, 9]


def _sidecar(spool: Path, stem: str, **fields) -> Path:
    meta = {"format": "trlrec.video_spool", "version": 1, "tag": "clip", "env": None,
            "episode": None, "height": H, "width": W, "channels": 3, "dtype": "uint8",
            "fps": None, "recorder": "0123456789ab", "seq": 0, "created": 1.0}  # fmt: skip
    meta.update(fields)
    meta = {k: v for k, v in meta.items() if v is not _MISSING}
    path = spool / f"{stem}.video.json"
    path.write_text(json.dumps(meta))
    return path


_MISSING = object()


def test_hostile_sidecars_are_skipped_and_reported_and_the_good_videos_delivered(tmp_path, caplog):
    spool = tmp_path / "spool"
    logger = FileLogger(tmp_path / "sent.jsonl")

    def genuine_orphan():  # a recorder killed before its dump: its video is an orphan
        vr = VideoRecorder(logger, "clip", spool_dir=spool)
        _frames(vr, 4, value=5)
        vr._tracks[0].finish()

    _in_child(genuine_orphan)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * (H * W * 3 * 2))
    frame = b"\x01" * (H * W * 3)
    bad = {
        "escape": dict(recorder="/../../victim"),
        "link": {},
        "zero": dict(height=0),
        "string": dict(height="8"),
        "missing": dict(height=_MISSING),
        "fps": dict(fps="fast"),
        "fps_neg": dict(fps=-1),
    }
    for stem, fields in bad.items():
        _sidecar(spool, f"clip.{stem}", **fields)
        if stem != "link":
            (spool / f"clip.{stem}.frames").write_bytes(frame)
    (spool / "clip.link.frames").symlink_to(secret)
    (spool / "clip.list.video.json").write_text("[1, 2]")
    (spool / "clip.deep.video.json").write_text("[" * 100000 + "]" * 100000)
    (spool / "clip.dir.video.json").mkdir()
    caplog.set_level(logging.WARNING, logger="trlrec.video.spool")
    for _ in range(2):  # every dump: the bad files are skipped again, never fatal
        vr = VideoRecorder(logger, "clip", spool_dir=spool)
        vr.dump()
        vr.close()
    assert logger.sent() == [["clip", 0, 4, 5]]  # the genuine orphan, once; no secret bytes
    assert not (tmp_path.parent / "victim.lock").exists()
    assert not list(tmp_path.rglob("victim*"))
    assert secret.read_bytes() == b"s" * (H * W * 3 * 2)
    warned = " ".join(r.getMessage() for r in caplog.records)
    for stem in [*bad, "list", "deep", "dir"]:
        assert f"clip.{stem}.video.json" in warned, stem


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_partial_mp4s_of_killed_recorders_are_removed_by_the_next_recorder_of_the_tag(tmp_path):
    """A kill mid-encode leaves ``.clip_5.mp4.<pid>-<hex>.part``; the next dump removes it."""
    from trlrec.loggers import CSVLogger

    lg = CSVLogger("exp", log_dir=str(tmp_path))
    videos = lg.experiment_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    dead = _dead_pid()
    orphan = videos / f".clip_5.mp4.{dead}-0a1b2c3d.part"
    live = videos / f".clip_7.mp4.{os.getpid()}-0a1b2c3d.part"  # an encode in progress
    other = videos / f".other_5.mp4.{dead}-0a1b2c3d.part"  # another tag's
    for p in (orphan, live, other):
        p.write_bytes(b"partial")
    vr = VideoRecorder(lg, "clip", spool_dir=tmp_path / "spool")
    vr.dump()
    vr.close()
    assert not orphan.exists()
    assert live.exists()
    assert other.exists()
