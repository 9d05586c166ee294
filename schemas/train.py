"""Config sections and tables of training: dataset preparation (`vaerr preprocess`), pretext
pretraining (`vaerr pretrain`), fine-tuning (`vaerr finetune`) and evaluation (`vaerr
evaluate`).

Every number of METHOD.md's training recipe is a field here with the recipe's value as its
default (AdamW 3e-4, weight decay 1e-2, cosine per epoch, batch 5, random 4 s clips, 3 per
file per epoch, seed 1; horizontal flip p = 0.5, vaerr's choice: the public code has none by
default, other augmentations off). Values the paper does not give are marked "inferred" in
their description.

Every size, count and duration has an upper bound (`le=`) far above any real run (widths of
16384, 1024 workers, 80 s clips = the longest model window, 100000 epochs) that stops a typo
such as 1e9 before it becomes an out-of-memory crash; the error names the limit. NaN and
infinities are refused for every float (schemas.base.Section).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.base import Section

DatasetKind = Literal["generic", "sewa", "avec2019", "recola", "affwild2", "afewva", "lrs3"]


class AudioFeatureConfig(Section):
    """Per-video-frame audio features: the LiRA pretext target (METHOD.md, "Pretext").

    The built-in extractor is log-mel filterbanks; any importable callable
    `module.sub:function(audio_f32 [N], rate_hz, **kwargs) -> [M, D]` giving one feature
    vector per `hop_ms` (e.g. a PASE+ wrapper: 256-d at 100 Hz) plugs in instead.
    """

    enabled: bool = Field(
        True, description="Compute audio features for videos that have an audio track."
    )
    extractor: str = Field(
        "logmel",
        description="'logmel' (built in) or an importable callable 'package.module:function'.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to a callable extractor."
    )
    rate: int = Field(
        16000, gt=0, le=192000, description="Audio sample rate the extractor sees, Hz."
    )
    n_mels: int = Field(80, ge=1, le=512, description="Mel bands of the log-mel extractor.")
    win_ms: float = Field(
        25.0, gt=0, le=1000, description="Analysis window of the log-mel STFT, ms."
    )
    hop_ms: float = Field(
        10.0, gt=0, le=1000, description="Feature hop, ms (also the rate a callable must return)."
    )
    n_fft: int = Field(
        512, ge=16, le=65536, description="FFT size of the log-mel STFT (>= window)."
    )
    fmin: float = Field(0.0, ge=0, description="Lowest mel filter edge, Hz.")
    fmax: float | None = Field(
        None, gt=0, description="Highest mel filter edge, Hz (None: rate/2)."
    )
    log_floor: float = Field(1e-6, gt=0, description="Added before the log to avoid log(0).")
    stack: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Audio frames stacked per video frame (None: round(1000 / (fps * hop_ms)) "
        "= 4 at 25 fps and 10 ms).",
    )
    normalise: Literal["utterance", "none"] = Field(
        "utterance",
        description="Per-utterance mean/variance normalisation of each feature dimension "
        "(keeps the L1 target on one scale across recordings).",
    )


class DataConfig(Section):
    """Which dataset to read and where, how labels become per-frame targets, and where the
    clip shards go (`vaerr preprocess`; training reads `shards`)."""

    dataset: DatasetKind = Field(
        "generic",
        description="Annotation format: generic CSV, sewa, avec2019 (CES), recola (AVEC "
        "2016 ARFF), affwild2, afewva, lrs3 (unlabelled).",
    )
    videos: str | None = Field(
        None, description="Folder/URI searched recursively for the videos (generic: the root "
        "the CSV's `video` paths are relative to)."
    )  # fmt: skip
    labels: str | None = Field(
        None, description="Annotation file or folder/URI (searched recursively); lrs3: unused."
    )
    manifest: str | None = Field(
        None,
        description="Optional CSV `video,split[,subject|identity]` overriding splits and "
        "subjects (`video` = path relative to `videos`, or the file stem).",
    )
    shards: str = Field("shards", description="Output folder/URI of the clip shards.")
    sewa_condition: Literal["A", "V", "AV"] = Field(
        "V",
        description="SEWA annotation condition: audio only, video only (METHOD default), or "
        "audio-visual.",
    )
    time_scale: float = Field(
        1.0,
        gt=0,
        le=1000,
        description="Multiplier turning annotation time stamps into seconds (e.g. 0.001 if "
        "a SEWA export is in ms).",
    )
    face_rule: Literal["largest", "longest", "all"] = Field(
        "largest",
        description="Which track is the labelled person when a video holds several faces: "
        "largest mean box area (ties: longer), longest track, or all tracks (unlabelled "
        "data only). Labels naming a face (generic `face` column = left-to-right index, "
        "Aff-Wild2 _left/_right) pick by horizontal order instead.",
    )
    major_track_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Tracks shorter than this fraction of the longest are ignored when "
        "ordering faces left to right (fragments and passers-by).",
    )
    label_gap_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="A frame gets a label only if a valid annotation lies within this many "
        "seconds (None: the annotation step, i.e. the median spacing).",
    )
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2),
        description="train/validation/test fractions, by subject, for datasets without an "
        "official split (AFEW-VA, generic without a split column).",
    )
    label_tracks: Literal["one", "overlapping"] = Field(
        "one",
        description="Tracks kept per labelled face: 'one' = the face_rule's track (the "
        "paper's); 'overlapping' = also every other track whose mean box overlaps it "
        "(IoU >= overlap_iou) and shares no frame with a kept one: the same face lost and "
        "re-found by the tracker, so its annotated frames are trained on and scored too.",
    )
    overlap_iou: float = Field(
        0.3, gt=0, le=1, description="Mean-box IoU for label_tracks='overlapping'."
    )
    keep_unlabelled: bool = Field(
        False, description="Also shard videos of a labelled dataset that have no annotation."
    )
    audio: AudioFeatureConfig = Field(
        default_factory=AudioFeatureConfig, description="Audio features (pretext targets)."
    )
    row_group_frames: int = Field(
        250,
        ge=16,
        le=100000,
        description="Frames per Parquet row group (clip reads skip other groups).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch CPU threads of an in-process preprocess run (None: torch's "
        "default; Ray actors get their CPU share).",
    )
    actors: int = Field(
        1, ge=1, le=1024, description="Face-stage actors of the Ray Data preprocess job."
    )
    num_cpus: float = Field(
        0.5, gt=0, le=256, description="CPUs per preprocess actor (fractional)."
    )
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPU share per preprocess actor.")


class AugmentConfig(Section):
    """Training augmentations of a whole clip: horizontal flip on by default (vaerr's choice;
    the public code flips only with --augment), the others off (probability 0)."""

    hflip_p: float = Field(0.5, ge=0, le=1, description="Horizontal flip of the whole clip.")
    crop_p: float = Field(
        0.0, ge=0, le=1, description="Random crop of `crop_size` px (see crop_resize)."
    )
    crop_size: int = Field(88, ge=8, le=512, description="Random crop side, px (METHOD: 88 of 96).")
    crop_resize: bool = Field(
        True,
        description="Resize the crop back to the input side; false: the crop is the input "
        "(the public code's RandomCrop(80)); then crop_p must be 0 or 1 (one size a batch).",
    )
    cutout_p: float = Field(0.0, ge=0, le=1, description="One random square set to mid-gray.")
    cutout_frac: float = Field(
        0.3, gt=0, le=1, description="Cutout square side as a fraction of the crop side."
    )
    time_mask_p: float = Field(
        0.0, ge=0, le=1, description="One random run of frames set to mid-gray."
    )
    time_mask_frames: int = Field(
        10, ge=1, le=2000, description="Longest time-masked run, frames (inferred)."
    )
    time_out_p: float = Field(
        0.0, ge=0, le=1, description="The whole clip set to `fill` (the public code's TimeOut)."
    )
    fill: int = Field(
        128,
        ge=0,
        le=255,
        description="Gray of masked pixels (cutout, time mask, time-out). The public code's "
        "masks are zeros after its normalisation: the mean gray, round(0.421 * 255) = 107.",
    )
    noise_p: float = Field(0.0, ge=0, le=1, description="Salt-and-pepper noise on the clip.")
    noise_amount: float = Field(
        0.02, ge=0, le=1, description="Fraction of pixels set to 0 or 255 by the noise."
    )
    solarise_p: float = Field(0.0, ge=0, le=1, description="Solarise the clip.")
    solarise_threshold: int = Field(
        128, ge=0, le=255, description="Pixels at or above this gray level are inverted."
    )

    @model_validator(mode="after")
    def _one_size(self) -> AugmentConfig:
        if not self.crop_resize and 0 < self.crop_p < 1:
            raise ValueError("augment.crop_resize=false needs augment.crop_p 0 or 1")
        return self


class TrainConfig(Section):
    """The optimisation and the Ray Train run (shared by `pretrain` and `finetune`)."""

    name: str = Field(
        "vaerr-run",
        description="Run name: outputs and Ray checkpoints go to storage_path/name; a run "
        "restarted with the same name resumes from its last checkpoint.",
    )
    storage_path: str = Field(
        "runs", description="Folder/URI (local or s3://) of runs, checkpoints and metrics."
    )
    epochs: int = Field(20, ge=1, le=100000, description="Epochs (public code default: 20).")
    batch_size: int = Field(
        5,
        ge=1,
        le=4096,
        description="GLOBAL batch: clips per optimiser step summed over all workers (METHOD: "
        "5). Each of num_workers workers takes batch_size / num_workers clips; a batch that "
        "does not divide is an error. CCC terms are computed on the global batch (moments "
        "all-reduced across workers).",
    )
    clip_seconds: float = Field(
        4.0,
        gt=0,
        le=80,
        description="Training clip length, s (unless clip_frames); shorter "
        "sequences are used whole.",
    )
    clip_frames: int | None = Field(
        None,
        ge=1,
        le=2000,
        description="Training clip length in frames, instead of clip_seconds x video.fps "
        "(the public code: its 4 s at a hard-coded 50 fps = 200).",
    )
    clips_per_file: int = Field(
        3, ge=1, le=1000, description="Random clips drawn from every training sequence per epoch."
    )
    frozen_batchnorm: Literal["eval", "train"] = Field(
        "eval",
        description="Batch norm of frozen parts (model.finetune not full) while training: "
        "eval (running statistics fixed; recommended) or train (batch statistics, running "
        "ones updated: the public code's, which only sets requires_grad=False).",
    )
    train_splits: tuple[str, ...] = Field(
        ("train",), description="Shard splits trained on (pretext: e.g. ['pretext'])."
    )
    val_splits: tuple[str, ...] = Field(
        ("validation",), description="Shard splits validated on (empty: no validation)."
    )
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate (METHOD: 3e-4).")
    min_lr: float = Field(1e-6, ge=0, description="Cosine floor (public code: 1e-6).")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (METHOD: 1e-2).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    scheduler: Literal["cosine", "constant"] = Field(
        "cosine", description="Learning-rate schedule, stepped once per epoch."
    )
    grad_clip: float | None = Field(
        None, gt=0, description="Clip the gradient norm to this (None: off)."
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Validate and deliver an exponential moving average of the weights "
        "(batch-norm statistics included), updated after every optimiser step with this "
        "decay (0.98: about the last 50 steps), instead of the last step's weights: the "
        "best-epoch choice and the product then depend less on the last few batches. "
        "None: off (the recipe's).",
    )
    seed: int = Field(1, le=2**32 - 1, description="Seed of weights, clip order and augmentations.")
    max_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Cap on optimiser steps per epoch (debugging, smoke runs).",
    )
    num_workers: int = Field(
        1,
        ge=1,
        le=1024,
        description="Ray Train workers (DDP processes; one GPU each with use_gpu).",
    )
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); else CPU (gloo).")
    cpus_per_worker: float = Field(
        1.0, gt=0, le=256, description="CPUs reserved per worker (fractional on small machines)."
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch CPU threads per worker (None: round(cpus_per_worker) on Ray, "
        "torch's default in-process). More threads than free cores thrash.",
    )
    loader_num_cpus: float = Field(
        0.25, gt=0, le=256, description="CPUs per Ray Data clip-loading task (fractional)."
    )
    clips_in_memory_mb: int = Field(
        2048,
        ge=0,
        le=1_048_576,
        description="When the training sequences' crops take at most this many MB, every "
        "worker holds them in memory and draws its clips itself (read once, no Ray Data "
        "execution per epoch: on small corpora that was most of an epoch's time); above it, "
        "clips stream from the shards through Ray Data. 0: always stream. Does not change "
        "what is learned, only where clips are read.",
    )
    max_failures: int = Field(
        3,
        ge=-1,
        le=100,
        description="Worker-group restarts from the last checkpoint (-1: no limit).",
    )
    chaos_kill_after_epochs: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="Fault drill (Ray runner only): on the first attempt, rank 0 SIGKILLs "
        "itself right after reporting this many epochs, so a cluster's recovery "
        "(max_failures, checkpoints on storage_path) is seen working before a long run. The "
        "group resumes from the last checkpoint Ray Train registered: that epoch's, or the one "
        "before when the kill outran the controller (Ray holds one report per worker, so the "
        "earlier one was taken). None: off.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=1000, description="Ray checkpoints kept (the best model is saved separately)."
    )
    eval_chunk_frames: int = Field(
        256,
        ge=8,
        le=100000,
        description="Frames per encoder pass when scoring whole sequences (bounds memory; "
        "results do not depend on it).",
    )

    def per_worker_batch(self, workers: int | None = None) -> int:
        """Clips per worker and step: the global `batch_size` split over `workers`
        (default num_workers). Raises ValueError naming the fix when it does not divide."""
        n = self.num_workers if workers is None else workers
        if self.batch_size % n:
            lo = max(n, self.batch_size - self.batch_size % n)
            raise ValueError(
                f"train.batch_size={self.batch_size} (global) does not divide over "
                f"train.num_workers={n}: set train.batch_size to a multiple of {n} "
                f"(e.g. {lo} or {lo + n}) or train.num_workers to a divisor of "
                f"{self.batch_size} (e.g. 1)"
            )
        return self.batch_size // n

    def clip_frames_at(self, fps: float) -> int:
        """Clip length in frames at `fps` (clip_frames when set)."""
        if self.clip_frames is not None:
            return self.clip_frames
        return max(1, int(round(self.clip_seconds * fps)))


class LiraConfig(Section):
    """LiRA: encoder -> Conformer -> MLP predicting the audio features per frame (L1)."""

    conformer_dim: int = Field(256, ge=8, le=8192, description="Conformer width (inferred).")
    conformer_layers: int = Field(4, ge=1, le=64, description="Conformer blocks (inferred).")
    conformer_heads: int = Field(4, ge=1, le=64, description="Self-attention heads (inferred).")
    conformer_ff_mult: int = Field(4, ge=1, le=16, description="Feed-forward expansion (inferred).")
    conformer_kernel: int = Field(
        31, ge=1, le=255, description="Depthwise convolution kernel, frames, odd (inferred)."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the Conformer.")
    mlp_hidden: int = Field(512, ge=8, le=16384, description="Hidden width of the output MLP.")
    control: Literal["none", "shift"] = Field(
        "none",
        description="Sanity control: 'shift' pairs every clip with its own audio features "
        "circularly shifted by a fresh random offset each step (breaks audio-visual "
        "synchrony, keeps speaker and content statistics); its L1 is the floor that "
        "synchrony must beat.",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> LiraConfig:
        if self.conformer_dim % self.conformer_heads:
            raise ValueError("lira.conformer_dim must be divisible by lira.conformer_heads")
        if self.conformer_kernel % 2 == 0:
            raise ValueError("lira.conformer_kernel must be odd")
        return self


class ViewConfig(Section):
    """How one augmented view of a clip is made (BYOL / DINO)."""

    size: int = Field(96, ge=16, le=512, description="Output side of the view, px.")
    scale: tuple[float, float] = Field(
        (0.6, 1.0), description="Random-resized-crop area range, fraction of the frame."
    )
    hflip_p: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability.")
    brightness: float = Field(0.3, ge=0, description="Max relative brightness change.")
    contrast: float = Field(0.3, ge=0, description="Max relative contrast change.")
    blur_p: float = Field(0.3, ge=0, le=1, description="Gaussian blur probability.")
    solarise_p: float = Field(0.0, ge=0, le=1, description="Solarise probability.")
    time_mask_p: float = Field(0.3, ge=0, le=1, description="Time-mask probability.")


class ByolConfig(Section):
    """Video-BYOL: online encoder + projector + predictor vs an EMA target (normalised MSE)."""

    proj_dim: int = Field(256, ge=8, le=16384, description="Projection size (BYOL: 256).")
    hidden_dim: int = Field(1024, ge=8, le=16384, description="Projector/predictor hidden size.")
    ema: float = Field(
        0.99, ge=0, lt=1, description="Initial target EMA momentum, raised to 1 by cosine."
    )
    view1: ViewConfig = Field(default_factory=ViewConfig, description="First view.")
    view2: ViewConfig = Field(
        default_factory=lambda: ViewConfig(blur_p=0.1, solarise_p=0.2),
        description="Second view (BYOL's asymmetric blur/solarise).",
    )


class DinoConfig(Section):
    """DINO: student/teacher (EMA), centring + sharpening, global and local crops, CE."""

    out_dim: int = Field(
        4096, ge=2, le=262144, description="Prototype logits (DINO: 65536; inferred)."
    )
    hidden_dim: int = Field(1024, ge=8, le=16384, description="Head MLP hidden size.")
    bottleneck_dim: int = Field(
        256, ge=8, le=16384, description="Head bottleneck before prototypes."
    )
    teacher_temp: float = Field(0.04, gt=0, description="Teacher softmax temperature.")
    student_temp: float = Field(0.1, gt=0, description="Student softmax temperature.")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="Teacher centre EMA momentum.")
    ema: float = Field(0.996, ge=0, lt=1, description="Initial teacher EMA momentum (cosine).")
    local_crops: int = Field(4, ge=0, le=32, description="Local crops per clip.")
    global_view: ViewConfig = Field(
        default_factory=lambda: ViewConfig(scale=(0.5, 1.0)), description="Global crops (2)."
    )
    local_view: ViewConfig = Field(
        default_factory=lambda: ViewConfig(size=48, scale=(0.2, 0.5)),
        description="Local crops (smaller, student only).",
    )


class PretrainConfig(Section):
    """`vaerr pretrain`: which pretext task trains the encoder, and where it is written."""

    method: Literal["lira", "byol", "dino"] = Field("lira", description="Pretext task.")
    output: str | None = Field(
        None,
        description="Encoder checkpoint URI (None: storage_path/name/encoder.pt); give it to "
        "finetune as model.encoder_checkpoint.",
    )
    lira: LiraConfig = Field(default_factory=LiraConfig, description="LiRA.")
    byol: ByolConfig = Field(default_factory=ByolConfig, description="Video-BYOL.")
    dino: DinoConfig = Field(default_factory=DinoConfig, description="DINO.")


class EvalConfig(Section):
    """`vaerr evaluate`: both protocols on a split of the shards."""

    splits: tuple[str, ...] = Field(
        ("test",), description="Shard splits to score (RECOLA: ['validation'], no test labels)."
    )
    protocols: tuple[Literal["sequence", "windows"], ...] = Field(
        ("sequence", "windows"),
        description="sequence: whole sequences (the paper's); windows: the batch job's "
        "sliding windows (infer.window_frames / hop_frames) blended per frame (what users "
        "get).",
    )
    output: str | None = Field(
        None, description="Folder/URI of the report (None: beside the checkpoint, eval/)."
    )
    write_predictions: bool = Field(
        True, description="Also write per-frame predictions and labels (predictions.parquet)."
    )


PaperTable = Literal["I", "II", "III"]
DATASET_COLUMNS = ("sewa", "recola")
TABLE_III_COLUMNS = tuple(f"{d}-{m}" for d in DATASET_COLUMNS for m in ("finetuned", "frozen"))


class PaperCell(Section):
    """One cell of the paper's Tables I-III that a config reproduces, with the paper's
    figures (CCC, AVEC convention) as data, so `vaerr paper` can print ours beside them."""

    table: PaperTable = Field(description="Table of Jegorova et al., FG 2023: I, II or III.")
    row: str = Field(
        min_length=1,
        description="Row key: Table III '1'..'8' (the loss rows in METHOD.md's order); "
        "Table II '<pretext>-<finetuned|frozen>' (lira, byol, dino); Table I 'ss-vaerr', "
        "'backbone', 'scratch'.",
    )
    column: str = Field(
        description="Table III: '<sewa|recola>-<finetuned|frozen>'; Tables I, II: 'sewa' or "
        "'recola'."
    )
    arousal: float | None = Field(
        None, ge=-1, le=1, description="The paper's arousal CCC (None: not transcribed yet)."
    )
    valence: float | None = Field(
        None, ge=-1, le=1, description="The paper's valence CCC (None: not transcribed yet)."
    )
    source: str = Field(
        "METHOD.md", description="Where the figures were transcribed from (checkable)."
    )
    note: str | None = Field(None, description="E.g. where the paper disagrees with itself.")

    @property
    def key(self) -> tuple[str, str, str]:
        """(table, row, column): the cell's identity."""
        return (self.table, self.row, self.column)

    @model_validator(mode="after")
    def _column_fits(self) -> PaperCell:
        cols = TABLE_III_COLUMNS if self.table == "III" else DATASET_COLUMNS
        if self.column not in cols:
            raise ValueError(f"paper table {self.table}: column must be one of {cols}")
        if self.table == "III" and self.row not in {str(i) for i in range(1, 9)}:
            raise ValueError("paper table III: row must be '1'..'8'")
        return self


class PaperConfig(Section):
    """`paper:` in a config: which table cells this config reproduces (a cell two tables
    share is one config listing both) and which of its settings the paper leaves open."""

    cells: tuple[PaperCell, ...] = Field(
        (), description="The table cells this config is (empty: an extra, outside the tables)."
    )
    inferred: dict[str, str] = Field(
        default_factory=dict,
        description="Settings the paper does not state, each with the reason for our choice "
        "(e.g. loss: 'Table II LiRA fine-tuned equals Table III row 1').",
    )
    note: str | None = Field(None, description="Free text shown in the plan.")
