"""The paths of a job's output folder OUT, named once (README "Outputs"), as the shard layout
of `vaerr preprocess` is in training/datasets/shards.py.

OUT/
  run.json               the run record (state, model, config hash, the INPUTs as given)
  config.yaml            the config of the last run
  manifest.parquet       every video the INPUTs listed (MANIFEST)
  videos/<id>.parquet    one status row per video (VIDEOS)
  timelines/<id>.parquet the video's timelines, one row per face track and step (TIMELINES)
  crops/<id>.parquet     aligned crops, only with infer.store_crops (CLIPS)
  _vaerr.lock            held while a job writes OUT (pipeline/outlock.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.storage import join

RUN_RECORD = "run.json"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.parquet"
VIDEOS_DIR = "videos"
TIMELINES_DIR = "timelines"
CROPS_DIR = "crops"
LOCK_NAME = "_vaerr.lock"
OUT_MARKERS = (RUN_RECORD, VIDEOS_DIR, MANIFEST_FILE)
"""Names that make a folder a job's OUT (whose timelines live in OUT/timelines/)."""


@dataclass(frozen=True)
class OutPaths:
    """The URIs of one OUT (local path or any URI storage takes)."""

    root: str

    @property
    def run_record(self) -> str:
        return join(self.root, RUN_RECORD)

    @property
    def config(self) -> str:
        return join(self.root, CONFIG_FILE)

    @property
    def manifest(self) -> str:
        return join(self.root, MANIFEST_FILE)

    @property
    def videos(self) -> str:
        return join(self.root, VIDEOS_DIR)

    @property
    def timelines(self) -> str:
        return join(self.root, TIMELINES_DIR)

    def status(self, video_id: str) -> str:
        """The status table of one video."""
        return join(self.root, VIDEOS_DIR, f"{video_id}.parquet")

    def timeline(self, video_id: str) -> str:
        """The timeline table of one video."""
        return join(self.root, TIMELINES_DIR, f"{video_id}.parquet")

    def crops(self, video_id: str) -> str:
        """The aligned crops of one video (infer.store_crops)."""
        return join(self.root, CROPS_DIR, f"{video_id}.parquet")
