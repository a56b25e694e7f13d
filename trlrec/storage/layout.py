"""Names and constants of the on-disk format (see docs/FORMAT.md)."""

from __future__ import annotations

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DATASET_FILE",
    "SHARDS_DIR",
    "SHARD_FILE",
    "SCHEMA_FILE",
    "COMMIT_FILE",
    "LOCK_FILE",
    "EPISODES_FILE",
    "EPISODE_META_FILE",
    "STREAMS_DIR",
    "EPISODE_FIELDS",
    "EPISODE_RECORD_BYTES",
    "FLAG_DONE",
    "FLAG_CUT",
    "FLAG_OPEN",
    "MAX_JSON_BYTES",
    "chunk_dir_name",
]

FORMAT_NAME = "trlrec"
FORMAT_VERSION = 1

DATASET_FILE = "dataset.json"
SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"
SCHEMA_FILE = "schema.json"
COMMIT_FILE = "COMMIT"
LOCK_FILE = "LOCK"
EPISODES_FILE = "episodes.bin"
EPISODE_META_FILE = "episode_meta.jsonl"
STREAMS_DIR = "streams"

# episodes.bin: little-endian int64 records of these fields, in this order.
EPISODE_FIELDS = (
    "stream",  # sub-environment index within the shard
    "start_row",  # logical row of the episode's first timestep in its stream
    "num_steps",  # transitions T; the episode spans T + 1 rows
    "flags",  # EpisodeFlags bits
    "first_transition",  # index of the first transition among the stream's transitions
    "meta_offset",  # byte offset of its JSON line in episode_meta.jsonl, or -1
    "meta_length",  # byte length of that line (without newline), or 0
    "reserved",
)
EPISODE_RECORD_BYTES = 8 * len(EPISODE_FIELDS)

# Flags of an episode record.
FLAG_DONE = 1  # ended by a done flag of the environment
FLAG_CUT = 2  # ended because the next transition did not continue it (rollout cut, reset)
FLAG_OPEN = 4  # still being written when the commit was made (or the writer died)

MAX_JSON_BYTES = 64 * 2**20  # metadata files larger than this are refused as damaged


def chunk_dir_name(index: int) -> str:
    """The directory name of chunk ``index`` of a stream."""
    return f"chunk-{index:06d}"
