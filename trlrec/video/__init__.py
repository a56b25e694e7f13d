"""The parts of :class:`~trlrec.VideoRecorder` below the transform, one concept per module.

- :mod:`trlrec.video.frames`: frame layout detection and conversion to RGB ``uint8``
  ``(H, W, 3)``, center crop, grid tiling of batched envs;
- :mod:`trlrec.video.spool`: the on-disk spool (frames files, sidecars, locks, step
  numbering, the choice of spool directory), with its format;
- :mod:`trlrec.video.track`: the per-env video state (episodes, triggers, ``skip``,
  ``max_frames``, the open segment).

The transform itself is :mod:`trlrec.transforms.video_recorder`.
"""

__all__ = ["frames", "spool", "stream"]
