"""``stats()`` of the recorders and the writer, polled by TorchRL's own ``LoggerMonitor``."""

from __future__ import annotations

import os
import shutil

import pytest
from torchrl.envs import GymEnv
from torchrl.record.loggers.monitoring import Every, LoggerMonitor

from trlrec import PixelRenderTransform, TensorDictRecorder, TrajectoryReader, VideoRecorder
from trlrec.errors import StoreWriteError
from trlrec.loggers import MemoryLogger
from trlrec.storage.format import FLAG_OPEN


def test_logger_monitor_polls_a_recording_cartpole(tmp_path):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    logger = MemoryLogger("stats", log_dir=str(tmp_path))
    rec = TensorDictRecorder(tmp_path / "s", commit_every_steps=10)
    vr = VideoRecorder(logger, tag="clip")
    env = GymEnv("CartPole-v1", render_mode="rgb_array")
    env = env.append_transform(PixelRenderTransform()).append_transform(vr)
    env = env.append_transform(rec)
    monitor = LoggerMonitor(logger, background=False, on_error="raise")
    monitor.watch(rec, name="rec", schedule=Every.counter("steps_committed", 10))
    monitor.watch(vr, name="video")
    first = monitor.step()  # logs on start: nothing recorded yet
    assert first["rec"]["rec/steps_committed"] == 0.0
    assert first["rec"]["rec/shards"] == 0.0
    env.rollout(25, break_when_any_done=False)
    logged = monitor.step()
    got = logged["rec"]
    assert got["rec/steps"] == 25.0
    # a commit every 10 steps since the last one, and at episode ends: at most 9 wait
    assert got["rec/steps_pending"] <= 9.0
    assert got["rec/steps_committed"] + got["rec/steps_pending"] == 25.0
    assert got["rec/seconds_since_commit"] < 60.0
    assert got["rec/errors"] == 0.0
    assert "rec/last_error" not in got  # a str: the monitor keeps numbers only
    spooled = logged["video"]["video/frames_spooled"]
    assert logged["video"]["video/videos_pending"] == 1.0
    rec.dump()
    vr.dump()
    reader = TrajectoryReader(tmp_path / "s")
    final = monitor.step()  # the video's is due at every poll; the recorder's at 30 steps
    assert "rec" not in final
    final["rec"] = {f"rec/{k}": v for k, v in rec.stats().items()}
    assert final["rec"]["rec/steps_committed"] == reader.num_steps == 25
    infos = [reader.episode_info(i) for i in range(reader.num_episodes)]
    closed = sum(1 for info in infos if not info["flags"] & FLAG_OPEN)
    assert final["rec"]["rec/episodes_committed"] == closed
    row_bytes = reader.shards[0].schema.row_bytes()
    assert final["rec"]["rec/bytes_written"] == row_bytes * sum(
        s.next_row for s in reader.shards[0].streams
    )
    assert final["video"]["video/videos_sent"] == 1.0
    (video,) = logger.videos["clip"]
    assert video.frames.shape[0] == spooled  # every step's frame and each reset's
    assert final["video"]["video/frames_spooled"] == 0.0
    monitor.stop()  # logs a last snapshot of each
    assert logger.scalars["rec/steps_committed"][-1][1] == 25.0
    rec.close()
    vr.close()


def test_a_write_error_shows_in_stats(tmp_path):
    rec = TensorDictRecorder(tmp_path / "s")
    env = GymEnv("CartPole-v1").append_transform(rec)
    env.rollout(5, break_when_any_done=False)
    rec.dump()
    assert rec.stats()["last_error"] is None
    shutil.rmtree(rec.writer.shard_path)  # the shard vanishes under the writer
    env.rollout(5, break_when_any_done=False)
    with pytest.raises(StoreWriteError, match="was removed or replaced"):
        rec.dump()
    stats = rec.stats()
    assert stats["errors"] == 1
    assert "was removed or replaced" in stats["last_error"]
    assert stats["steps_committed"] == 5
    assert stats["steps_pending"] == 5
    with pytest.raises(StoreWriteError, match="was removed or replaced"):
        rec.close()  # its last commit fails the same way, and is not hidden
