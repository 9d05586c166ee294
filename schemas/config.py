"""Typed, frozen run configuration, loaded from YAML plus `--set a.b=c` overrides.

Every number of METHOD.md is a field here with the paper's value as its default; code never
hard-codes them. The resolved config is saved next to every output (`config.yaml`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator

from schemas.base import Section
from schemas.model import LossConfig, ModelConfig
from schemas.train import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    PaperConfig,
    PretrainConfig,
    TrainConfig,
)
from schemas.yamlsafe import MAX_YAML_BYTES, load_yaml

RETINAFACE_URL = "https://www.adrianbulat.com/downloads/python-fan/retinaface_mobilenet0.25.pth"
FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
MEAN_FACE_URL = (
    "https://raw.githubusercontent.com/mpc001/auto_avsr/main/preparation/detectors/"
    "retinaface/20words_mean_face.npy"
)


MAX_WINDOW_FRAMES = 2000
"""Longest model window, frames (80 s at 25 fps): a batch of windows of 96x96 crops stays a few
hundred MiB, and the GRU never needs more context than that."""


class StorageConfig(Section):
    """How to reach object stores; empty fields fall back to the standard AWS env vars."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint URL (else AWS_ENDPOINT_URL, else AWS)."
    )
    region: str | None = Field(None, description="S3 region (else AWS_DEFAULT_REGION).")
    key: SecretStr | None = Field(None, description="Access key id (else AWS_ACCESS_KEY_ID).")
    secret: SecretStr | None = Field(
        None, description="Secret access key (else AWS_SECRET_ACCESS_KEY). Never logged."
    )
    anon: bool = Field(False, description="Anonymous (unsigned) S3 access.")
    block_size_mb: int = Field(
        8, ge=1, le=512, description="Read-ahead block size for remote reads, MiB."
    )
    retry_s: float = Field(
        120.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="How long reads and writes retry a storage outage, s, "
        "before the video (read) or the run (write) fails with a clear message.",
    )
    source_timeout_s: float = Field(
        300.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Time limit on opening a source video and on each read of it, s: one that "
        "takes longer (a stalled mount or server) fails the video (a rerun retries it).",
    )


class VideoConfig(Section):
    """Decoding: the analysis frame rate, time range and streaming chunk size."""

    fps: float = Field(25.0, gt=0, le=240, description="Analysis rate, frames/s (METHOD: 25).")
    start_s: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        le=1e6,
        description="Start of the range to analyse, s. Bounded: at most 1e6 s, 11 days.",
    )
    end_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        le=1e6,
        description="End of the range to analyse, s. Bounded: at most 1e6 s, 11 days.",
    )
    audio_rate: int = Field(
        16000,
        gt=0,
        le=192000,
        description="Audio resample rate, Hz (mono). Bounded: at most 192 kHz.",
    )
    chunk_frames: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Frames decoded and detected per chunk (bounds memory); None: 32 on a CPU, "
        "256 where the face stage runs on a GPU (one detector batch). Not in config_hash.",
    )
    chunk_mb: int = Field(
        256,
        ge=8,
        le=16384,
        description="Cap on one chunk's decoded RGB, MiB (4K video: fewer frames). Bounded: at "
        "most 16 GiB. Not in config_hash.",
    )

    @model_validator(mode="after")
    def _range(self) -> VideoConfig:
        if self.start_s is not None and self.end_s is not None and self.start_s >= self.end_s:
            raise ValueError(
                f"video.start_s ({self.start_s}) must be below video.end_s ({self.end_s})"
            )
        return self


class RoiConfig(Section):
    """Keyframes: full-frame detection on every `keyframe_every`-th detected frame; on the
    detected frames in between, RetinaFace runs only on a window around each live track."""

    keyframe_every: int = Field(
        1,
        ge=1,
        le=250,
        description="Every n-th detected frame (see every_k) is a full-frame keyframe; the "
        "others search only around live tracks, so new faces appear at the next keyframe. "
        "1: every detected frame is a keyframe (no ROI search; then not in config_hash).",
    )
    enlarge: float = Field(
        1.6, ge=1.1, le=6, description="ROI side / the track's last box side (motion margin)."
    )
    min_side: int = Field(
        128,
        ge=64,
        le=1024,
        multiple_of=32,
        description="Smallest ROI window side at the detector's input scale, px. Windows keep "
        "the keyframes' scale and 32-px anchor grid (same pixels, same anchors); one size per "
        "chunk, fitted to the largest enlarged face, the frame's size at most.",
    )


DEFAULT_DETECTOR = "retinaface"


class DetectorConfig(Section):
    """The face detector: RetinaFace MobileNet-0.25 (the network face-alignment ships) by
    default; other kinds are registered in pipeline/faces/detectors.py."""

    kind: str = Field(
        DEFAULT_DETECTOR,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Detector kind (pipeline/faces/detectors.py): retinaface, or one registered "
        "with register_detector. retinaface is not in config_hash (as before kinds existed).",
    )
    weights: str = Field(RETINAFACE_URL, description="Weights path, fsspec URI or http(s) URL.")
    max_side: int = Field(
        640, ge=64, le=4096, description="Detection input's longest side, px; boxes map back."
    )
    threshold: float = Field(0.8, ge=0, le=1, description="Face confidence threshold.")
    nms: float = Field(0.4, ge=0, le=1, description="NMS IoU threshold.")
    max_faces: int = Field(
        16,
        ge=1,
        le=1000,
        description="Keep at most this many faces per frame. Bounded: at most 1000.",
    )
    min_size_px: float = Field(
        16.0,
        ge=0,
        le=8192,
        description="Drop faces whose box side is below this, source px. Bounded: at most 8192.",
    )
    every_k: int = Field(
        1, ge=1, le=25, description="Detect every k-th frame; the tracker fills in between."
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Frames per detector forward pass; None: 8 on a CPU, 256 on a GPU (one input "
        "shape). Bounded: at most 1024. Not in config_hash.",
    )
    roi: RoiConfig = Field(default_factory=RoiConfig, description="Keyframes and ROI search.")


class LandmarkConfig(Section):
    """Which landmarks drive alignment: FAN's 68 points or the detector's 5."""

    kind: Literal["fan68", "retina5"] = Field(
        "fan68", description="fan68 (FAN 2D, the paper) or retina5 (detector's 5 points; fast)."
    )
    fan_weights: str = Field(FAN_URL, description="FAN 2D weights: path, fsspec URI or URL.")
    batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Face crops per FAN forward pass; None: 4 on a CPU, 256 on a GPU. Bounded: at "
        "most 1024. Not in config_hash.",
    )
    compile: bool = Field(
        False,
        description="torch.compile FAN (for long GPU jobs: its first batches compile for "
        "minutes; a failure falls back to the plain network, logged). Not in config_hash.",
    )


class TrackConfig(Section):
    """Linking detections into face tracks."""

    iou_threshold: float = Field(0.3, ge=0, le=1, description="Minimum IoU to link.")
    landmark_weight: float = Field(
        0.5,
        ge=0,
        le=100,
        description="Weight of normalised landmark distance in the link cost. Bounded: at most "
        "100.",
    )
    max_gap: int = Field(
        12, ge=0, le=250, description="Frames a track may miss before it ends (interpolated)."
    )
    min_length: int = Field(
        6,
        ge=1,
        le=250,
        description="Tracks spanning fewer frames than this are dropped. Bounded: at most 250 = "
        "10 s at 25 fps: a track's frames are held in memory until it is this long.",
    )


class AlignConfig(Section):
    """Similarity alignment to the mean face and the fixed whole-face crop."""

    mean_face: str = Field(MEAN_FACE_URL, description="68x2 mean face (256x256 frame) URI.")
    stable_points: tuple[int, ...] = Field(
        (33, 36, 39, 42, 45), description="iBUG-68 indices used for the fan68 similarity fit."
    )
    smooth_window: int = Field(
        12, ge=0, le=100, description="Centred moving-average window over landmarks, frames."
    )
    crop_scale: float = Field(
        1.3, gt=0.5, le=3, description="Enlargement of the mean-face bounding square (inferred)."
    )
    crop_size: int = Field(96, ge=16, le=512, description="Output crop side, px (grayscale).")


class FaceConfig(Section):
    """The whole face stage."""

    device: str = Field("cpu", description="torch device for face networks (cpu, cuda, cuda:1).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Autocast precision of the face networks (half on GPUs)."
    )
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Detector.")
    landmarks: LandmarkConfig = Field(default_factory=LandmarkConfig, description="Landmarks.")
    track: TrackConfig = Field(default_factory=TrackConfig, description="Tracker.")
    align: AlignConfig = Field(default_factory=AlignConfig, description="Alignment and crop.")


EMOTION_ANGLES = {
    "Pleased": 10, "Happy": 30, "Excited": 50, "Surprised": 75, "Alarmed": 95, "Fear": 110,
    "Angry": 125, "Disgust": 140, "Contempt": 155, "Miserable": 175, "Sad": 195,
    "Depressed": 210, "Bored": 230, "Tired": 250, "Sleepy": 265, "Calm": 290, "Relaxed": 315,
    "Content": 340,
}  # fmt: skip


class EmotionConfig(Section):
    """Words on the valence (x) / arousal (y) circumplex (Russell 1980; METHOD.md)."""

    angles: dict[str, float] = Field(
        default_factory=lambda: dict(EMOTION_ANGLES),
        min_length=1,
        description="Word -> angle in degrees, counter-clockwise from positive valence.",
    )
    neutral_radius: float = Field(
        0.15, ge=0, le=1.5, description="Points closer than this to the origin are 'Neutral'."
    )

    @field_validator("angles")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, a in v.items() if not math.isfinite(a)]
        if bad:
            raise ValueError(f"emotion.angles must be finite degrees; not {bad}")
        return v


# Windows per model forward pass when infer.batch_size is None: small on a CPU (as before issue
# 24), bigger on a GPU (32: what bench/gpu.sh ran the fp16 ssvaerr_r18 at on an H200).
CPU_WINDOWS, GPU_WINDOWS = 8, 32


class InferConfig(Section):
    """The batch job: windows, output rate, scheduling, what is stored."""

    window_frames: int = Field(
        200,
        ge=1,
        le=MAX_WINDOW_FRAMES,
        description="Frames per model window (200 = 8 s at 25 fps: the GRU sees "
        "whole reactions, twice the 4 s training clips).",
    )
    hop_frames: int = Field(
        100,
        ge=1,
        le=MAX_WINDOW_FRAMES,
        description="Frames between window starts (50% overlap: every frame is "
        "scored twice, away from a window edge at least once). Bounded: at most 2000.",
    )
    output_hz: float | None = Field(
        10.0,
        gt=0,
        le=240,
        description="Timeline rows per second (10 Hz = the AVEC step), at most the analysis "
        "rate video.fps; null: one row per analysis frame.",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Windows per model forward pass (a runtime size, not in config_hash). "
        f"None: {CPU_WINDOWS} where the model stage runs on a CPU, {GPU_WINDOWS} where it has "
        "a GPU (a GPU needs big batches to fill). Bounded: at most 1024.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Runs that may try a video whose failure was the environment's (storage "
        "unreachable, out of memory, a dead worker) before its failure is final; a video's own "
        "failure (undecodable, not a video) is final at once. Not in config_hash.",
    )
    decode_processes: bool = Field(
        False,
        description="Decode each open video in a worker process of its own (spawned once per "
        "face pipeline, reused), frames handed over in shared memory, instead of in a thread "
        "of the face stage: for a GPU fed several videos at once (face_videos), whose pace "
        "the one interpreter's lock would otherwise set. Not in config_hash: the same frames.",
    )
    face_actors: int = Field(
        1, ge=1, le=1024, description="Face-stage actor pool size (max). Bounded: at most 1024."
    )
    face_videos: int = Field(
        1,
        ge=1,
        le=64,
        description="Videos each face-stage actor takes at once (pipeline/faces/feed.py): "
        "each decodes in its own thread and keeps its own tracks, and their frames of the same "
        "size share the detector's batches, so one owner of a GPU is fed by many videos. 1: "
        "one video at a time (what a CPU needs). Not in config_hash (a frame's faces do not "
        "depend on its batch). Bounded: at most 64.",
    )
    model_actors: int = Field(
        1, ge=1, le=1024, description="Model-stage actor pool size. Bounded: at most 1024."
    )
    face_num_cpus: float = Field(
        0.5,
        gt=0,
        le=256,
        description="CPUs per face actor (fractional, or a 2-CPU node deadlocks). Bounded: at "
        "most 256.",
    )
    model_num_cpus: float = Field(
        0.5, gt=0, le=256, description="CPUs per model actor. Bounded: at most 256."
    )
    face_num_gpus: float = Field(
        0.0, ge=0, le=64, description="GPU share per face actor. Bounded: at most 64."
    )
    model_num_gpus: float = Field(
        0.0, ge=0, le=64, description="GPU share per model actor. Bounded: at most 64."
    )
    store_crops: bool = Field(
        False,
        description="Also write aligned crops to OUT/crops/ (faces are personal data: "
        "off by default).",
    )
    video_extensions: tuple[str, ...] = Field(
        (".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm", ".m4v", ".ts", ".wmv", ".flv"),
        description="Files listed from folders/prefixes must end with one of these.",
    )

    @model_validator(mode="after")
    def _hop_fits(self) -> InferConfig:
        if self.hop_frames > self.window_frames:
            raise ValueError("infer.hop_frames must not exceed infer.window_frames (gaps)")
        return self

    def windows_per_batch(self, gpu: bool) -> int:
        """`batch_size`, or the default of a model stage on a GPU (`gpu`) or on a CPU."""
        if self.batch_size is not None:
            return self.batch_size
        return GPU_WINDOWS if gpu else CPU_WINDOWS


class VaerrConfig(Section):
    """The root config: one YAML file, every section optional."""

    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object stores.")
    cache_dir: str | None = Field(
        None, description="Weights cache (else env VAERR_CACHE, else ~/.cache/vaerr)."
    )
    video: VideoConfig = Field(default_factory=VideoConfig, description="Decoding.")
    faces: FaceConfig = Field(default_factory=FaceConfig, description="Face stage.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Training loss.")
    infer: InferConfig = Field(default_factory=InferConfig, description="The batch job.")
    emotion: EmotionConfig = Field(default_factory=EmotionConfig, description="Emotion words.")
    data: DataConfig = Field(default_factory=DataConfig, description="Datasets and clip shards.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentations.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training run.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Pretext task.")
    evaluate: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    paper: PaperConfig | None = Field(
        None, description="The paper's table cells this config reproduces (paper configs)."
    )

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, v: str | None) -> str | None:
        return str(Path(v).expanduser()) if v else v

    @model_validator(mode="after")
    def _across_sections(self) -> VaerrConfig:
        hz = self.infer.output_hz
        if hz is not None and hz > self.video.fps:
            raise ValueError(
                f"infer.output_hz ({hz}) cannot exceed the analysis rate video.fps "
                f"({self.video.fps}); use null for one row per frame"
            )
        return self


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {dotted}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> nested dict; values parsed as YAML scalars (1 -> int, x -> str)."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        value = load_yaml(raw, f"--set {key.strip()}") if raw != "" else None
        _set_path(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


ConfigPaths = str | Path | list[str | Path] | tuple[str | Path, ...] | None


def read_config_files(paths: ConfigPaths) -> dict[str, Any]:
    """The YAML files merged in order (later files override earlier ones key by key): a
    dataset base, then a row overlay."""
    if not paths:
        return {}
    data: dict[str, Any] = {}
    for path in [paths] if isinstance(paths, str | Path) else list(paths):
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"--config {path} is a folder: give a YAML file")
        if p.is_file() and p.stat().st_size > MAX_YAML_BYTES:
            raise ValueError(f"{path}: config is over the {MAX_YAML_BYTES}-byte limit")
        one = load_yaml(p.read_text(), str(path)) or {}
        if not isinstance(one, dict):
            raise ValueError(f"{path}: top level must be a mapping")
        data = _merge(data, one)
    return data


def load_config(paths: ConfigPaths = None, overrides: list[str] | None = None) -> VaerrConfig:
    """Read YAML files (none, one, or several merged in order), apply `--set` overrides,
    validate. Errors name the field."""
    data = _merge(read_config_files(paths), parse_overrides(overrides))
    return VaerrConfig.model_validate(data)


def config_dump(cfg: VaerrConfig) -> dict[str, Any]:
    """JSON-able dict of the resolved config with secrets masked."""
    return json.loads(cfg.model_dump_json())


def config_yaml(cfg: VaerrConfig) -> str:
    """The resolved config as YAML (secrets masked), as saved next to outputs."""
    return yaml.safe_dump(config_dump(cfg), sort_keys=False)


RESULT_SECTIONS = (
    "video",
    "faces",
    "model",
    "emotion",
    "infer.window_frames",
    "infer.hop_frames",
    "infer.output_hz",
)


# (section, field, value hashed): runtime sizes, hashed at their defaults before issue 24.
RUNTIME_SIZES = (
    ("video", "chunk_frames", 32),
    ("video", "chunk_mb", 256),
    ("faces.detector", "batch_size", None),
    ("faces.landmarks", "batch_size", None),
)


def config_hash(cfg: VaerrConfig, sections: tuple[str, ...] = RESULT_SECTIONS) -> str:
    """Short sha256 over the sections that change results (not storage or cache paths)."""
    dump = config_dump(cfg)
    picked: dict[str, Any] = {}
    for key in sections:
        node: Any = dump
        for part in key.split("."):
            node = node[part]
        picked[key] = node
    # Runtime-only fields (device, batch sizes, where weights live) do not change results;
    # the checkpoint is identified separately by its model_id.
    for runtime in ("device", "checkpoint", "registry_file", "encoder_checkpoint"):
        picked.get("model", {}).pop(runtime, None)
    picked.get("faces", {}).pop("device", None)
    picked.get("faces", {}).get("landmarks", {}).pop("compile", None)  # how FAN runs, not what
    # Batch and chunk sizes are runtime settings (a frame's faces do not depend on its batch):
    # held at the values they had when they were hashed, so the hash keeps its old value.
    for section, key, held in RUNTIME_SIZES:
        node = picked
        for part in section.split("."):
            node = node.get(part, {})
        if key in node:
            node[key] = held
    detector = picked.get("faces", {}).get("detector", {})
    if detector.get("roi", {}).get("keyframe_every") == 1:  # ROI search off: as before it existed
        detector.pop("roi")
    if detector.get("kind") == DEFAULT_DETECTOR:  # the only detector before kinds existed
        detector.pop("kind")
    payload = json.dumps(picked, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
