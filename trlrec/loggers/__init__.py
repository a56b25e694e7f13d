"""Experiment loggers: CSV, TensorBoard, Weights & Biases and in-memory.

Importing this package imports neither tensorboard nor wandb; each is imported when
its logger is created.
"""

from trlrec.loggers.base import Logger, experiment_dir_of, is_logger, log_trajectory_to
from trlrec.loggers.csv import CSVLogger
from trlrec.loggers.memory import LoggedVideo, MemoryLogger
from trlrec.loggers.mp4 import DEFAULT_FPS, FfmpegWriter, Mp4Writer, encode_mp4
from trlrec.loggers.tensorboard import GifWriter, TensorBoardLogger, TensorboardLogger
from trlrec.loggers.video import Video
from trlrec.loggers.wandb import WandbLogger

__all__ = [
    "Logger",
    "CSVLogger",
    "TensorBoardLogger",
    "TensorboardLogger",
    "WandbLogger",
    "MemoryLogger",
    "LoggedVideo",
    "Video",
    "encode_mp4",
    "Mp4Writer",
    "GifWriter",
    "FfmpegWriter",
    "DEFAULT_FPS",
    "is_logger",
    "experiment_dir_of",
    "log_trajectory_to",
]
