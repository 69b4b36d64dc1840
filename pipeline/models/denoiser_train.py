"""Training pieces of the online denoiser that need no Ray: loss, schedule, split, state, the
fit of a trained denoiser's local filter alone (``fit_local_filter``) and the distillation of a
denoiser's two-view output into its one forward (``two_view_targets``, ``distil_two_view``).

The Ray Train loop (``pipeline.distributed.train``) is a thin layer over these, so the same
code trains in a plain loop. Targets are stage-1 ``clean`` tokens, inputs the ``raw`` tokens of
the same image; no ViT forward is needed during training.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from pipeline.config import check_choices, check_range
from pipeline.models.denoiser import Denoiser
from pipeline.models.objectives import feature_distance, warmup_cosine
from pipeline.models.shift import mirror_mean

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the denoiser (defaults follow the method's reference)."""

    epochs: int = 10
    """Passes over the training split."""
    batch_size: int = 32
    """Images per step per worker; the global batch is this times the workers."""
    base_lr: float = 2e-4
    """Learning rate at a global batch of 256; scaled by sqrt(global batch / 256)."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    warmup_fraction: float = 0.15
    """Share of all steps spent warming the learning rate up linearly from 0."""
    min_lr_fraction: float = 0.0
    """Where the cosine decay ends, as a share of the peak learning rate."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 turns it off."""
    val_fraction: float = 0.1
    """Share of image ids held out for validation (a fixed hash split, stable across runs)."""
    seed: int = 0
    """Seed of the denoiser's initialisation."""
    similarity_weight: float = 0.0
    """Weight of ``similarity_loss`` (the tokens' cosine-similarity structure within each
    image) beside L_dist; 0: L_dist alone, as in the method."""
    init: Literal["pattern", "zero"] = "pattern"
    """Where the positional embedding starts. ``pattern``: minus the corpus's artifact pattern
    (its stored artifact model, else the mean stage-1 G of a sample of it), so the untrained
    denoiser is the ``calib`` baseline; ``zero``: the identity (raw)."""

    def __post_init__(self) -> None:
        check_choices(self, "train.")
        check_range(self, "train.", {"epochs": 1, "batch_size": 1})


def denoise_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The method's L_dist (``objectives.feature_distance``), mean over the batch:
    (B, h, w, C) pairs -> scalar."""
    return feature_distance(pred, target).mean()


def similarity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, the mean squared difference between the (h*w, h*w) cosine-similarity
    matrices of predicted and target tokens: what nearest-neighbour matching reads, beside
    the per-token values L_dist reads. (B, h, w, C) pairs -> (B,)."""

    def gram(x: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(x.flatten(1, 2).float(), dim=-1)
        return unit @ unit.transpose(1, 2)

    return (gram(pred) - gram(target)).pow(2).mean(dim=(1, 2))


def summed_loss(pred: torch.Tensor, target: torch.Tensor, similarity_weight: float) -> torch.Tensor:
    """The training loss, L_dist + ``similarity_weight`` x ``similarity_loss``, summed over the
    images of (B, h, w, C) pairs: a scalar (divided by the images of a whole step by its
    callers, so a step split by grid weighs every image alike)."""
    total = feature_distance(pred, target).sum()
    if similarity_weight:
        total = total + similarity_weight * similarity_loss(pred, target).sum()
    return total


def token_cosine(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cosine over channels: (B, h, w, C) pairs -> (B, h, w)."""
    return F.cosine_similarity(x.float(), target.float(), dim=-1)


def peak_lr(cfg: TrainConfig, global_batch: int) -> float:
    """The reference's square-root scaling of the learning rate with the global batch."""
    return cfg.base_lr * math.sqrt(global_batch / 256)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay (``objectives.warmup_cosine``): the multiplier of the
    peak lr at ``step`` (0-based)."""
    return warmup_cosine(step, total_steps, cfg.warmup_fraction, cfg.min_lr_fraction)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    total_steps: int,
    cfg: TrainConfig,
    lr: float,
    clip_params: Iterable[torch.nn.Parameter] | None = None,
) -> float:
    """One optimiser step on a batch of raw -> target tokens; the batch loss (mean over its
    images).

    batch: (raw, target) pairs of (B_g, h_g, w_g, C) tensors, one pair per token grid (images of
    other aspects have other grids; a square corpus gives one pair). ``model`` may be a DDP
    wrapper; ``clip_params`` are the parameters whose gradient norm is clipped (default: the
    model's).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * lr_factor(step, total_steps, cfg)
    images = sum(len(raw) for raw, _ in batch)
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for k, (raw, target) in enumerate(batch):
        # one backward per grid; under DDP only the last one all-reduces, so every worker
        # syncs once a step however many grids its batch holds
        last = k == len(batch) - 1
        no_sync = getattr(model, "no_sync", None)  # DDP's: skip this backward's all-reduce
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            pred = model(raw)
            part = summed_loss(pred, target, cfg.similarity_weight) / images
            part.backward()
        loss += float(part.detach())
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(list(clip_params or model.parameters()), cfg.grad_clip)
    optimizer.step()
    return loss


def check_pairs(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Raise ``ValueError`` unless there are pairs and each is one (N, h, w, C) shape."""
    if not pairs:
        raise ValueError("no training pairs")
    for raw, target in pairs:
        if raw.shape != target.shape or raw.ndim != 4:
            raise ValueError(
                f"raw {tuple(raw.shape)} and target {tuple(target.shape)} must be "
                "one (N, h, w, C) shape"
            )


def train_denoiser(
    denoiser: torch.nn.Module, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig
) -> list[float]:
    """Train ``denoiser`` in a plain loop (no Ray) on raw -> target pairs, one (N_g, h_g, w_g,
    C) pair per token grid (several grids: several input sizes), the same steps as the Ray
    Train job on one worker: every epoch shuffles all images together and each step's batch
    is split by grid. The mean loss of each epoch."""
    check_pairs(pairs)
    owner = torch.cat([torch.full((len(raw),), g) for g, (raw, _) in enumerate(pairs)])
    local = torch.cat([torch.arange(len(raw)) for raw, _ in pairs])
    batch = min(cfg.batch_size, len(owner))
    steps_per_epoch = len(owner) // batch
    total = steps_per_epoch * cfg.epochs
    lr = peak_lr(cfg, batch)
    optimizer = make_optimizer(denoiser, cfg, lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    denoiser.train()
    losses, step = [], 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(owner), generator=gen)
        epoch = 0.0
        for k in range(steps_per_epoch):
            picked = order[k * batch : (k + 1) * batch]
            groups = []
            for g, (raw, target) in enumerate(pairs):
                idx = local[picked[owner[picked] == g]]
                if len(idx):
                    groups.append((raw[idx].float(), target[idx].float()))
            epoch += train_step(denoiser, optimizer, groups, step, total, cfg, lr)
            step += 1
        losses.append(epoch / max(1, steps_per_epoch))
    denoiser.eval()
    return losses


@dataclass(frozen=True)
class LocalFilterFit:
    """Fitting a trained denoiser's local filter alone (``fit_local_filter``)."""

    steps: int = 1500
    """Adam steps; each takes ``batch_size`` images of one token grid, the grids in turn."""
    lr: float = 1e-2
    """Constant learning rate of the filter's weights (they start at 0)."""
    batch_size: int = 8
    """Images per step."""
    similarity_weight: float = 10.0
    """Weight of ``similarity_loss`` beside L_dist, as in the shipped denoiser's training."""
    seed: int = 0
    """Seed of the batches drawn."""

    def __post_init__(self) -> None:
        check_range(self, "fit.", {"steps": 1, "batch_size": 1, "similarity_weight": 0})
        check_range(self, "fit.", {}, above={"lr": 0})


def fit_local_filter(
    denoiser: Denoiser, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: LocalFilterFit
) -> list[float]:
    """Fit only ``denoiser``'s local filter (``with_local_filter``) on raw -> target pairs, one
    (N_g, h_g, w_g, C) pair per token grid, everything else frozen. The blocks' outputs are
    computed once; the grids take turns, so each gets the same share of steps whatever its
    image count (the filter's gain is at the larger grids, where stage 1's shifted views
    count most). The mean loss of every 100 steps."""
    if denoiser.local is None:
        raise ValueError("the denoiser has no local filter (denoiser.local_kernel is 0)")
    check_pairs(pairs)
    with torch.no_grad():
        inputs = [
            (
                torch.cat([denoiser.blocks(raw[i : i + 8].float()) for i in range(0, len(raw), 8)]),
                target.float(),
            )
            for raw, target in pairs
        ]
    optimizer = torch.optim.Adam(denoiser.local.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, window = [], []
    for step in range(cfg.steps):
        x, target = inputs[step % len(inputs)]
        idx = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=gen)
        pred = denoiser.filtered(x[idx])
        loss = summed_loss(pred, target[idx], cfg.similarity_weight) / len(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(float(loss.detach()))
        if len(window) == 100 or step == cfg.steps - 1:
            losses.append(sum(window) / len(window))
            logger.info("local filter: step %d of %d, loss %.4f", step + 1, cfg.steps, losses[-1])
            window = []
    denoiser.eval()
    return losses


@torch.no_grad()
def two_view_targets(
    teacher: Denoiser, raw: torch.Tensor, mirrored: torch.Tensor, chunk: int = 8
) -> torch.Tensor:
    """The teacher's two-view output (``DenoisedViT(flip=True)``): raw (N, h, w, C) tokens of
    images and ``mirrored`` (N, h, w, C) of the same images mirrored -> (N, h, w, C) float32,
    the mean of the teacher's output on each and the mirror's mapped back (``mirror_mean``),
    ``chunk`` images at a time. Trained on raw -> these pairs (``train_denoiser``), a denoiser
    learns in one forward much of what its second view adds (docs/denoiser.md)."""
    if raw.shape != mirrored.shape:
        raise ValueError(
            f"raw {tuple(raw.shape)} and mirrored {tuple(mirrored.shape)} differ in shape"
        )
    return torch.cat(
        [
            mirror_mean(
                teacher(raw[i : i + chunk].float()), teacher(mirrored[i : i + chunk].float())
            )
            for i in range(0, len(raw), chunk)
        ]
    )


def distil_two_view(
    teacher: Denoiser,
    views: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    rounds: int,
) -> tuple[Denoiser, list[float]]:
    """Teach a denoiser's one forward its own two-view output: ``views`` holds, per token grid,
    raw (N, h, w, C) tokens of images and (N, h, w, C) of the same images mirrored. Each round
    trains a copy of the last (the first: ``teacher``, unchanged) on raw -> its
    ``two_view_targets`` with ``train_denoiser``. The student (eval, frozen) and every epoch's
    mean loss, round after round."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    student, losses = teacher, []
    for round_ in range(rounds):
        pairs = [(raw, two_view_targets(student, raw, mirrored)) for raw, mirrored in views]
        student = copy.deepcopy(student).requires_grad_(True)
        losses += train_denoiser(student, pairs, cfg)
        logger.info(
            "two-view distillation: round %d of %d, losses %s",
            round_ + 1,
            rounds,
            [round(x, 4) for x in losses[-cfg.epochs :]],
        )
        student.eval().requires_grad_(False)
    return student, losses


def is_validation(image_id: str, fraction: float) -> bool:
    """Held-out split by image id (sha256 hex): the same image is always on the same side."""
    return int(image_id[:8], 16) / 2**32 < fraction


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or the embedding)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "pos_embed" not in name else no_decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
    )


class ValidationSums:
    """Running sums over validation images: losses of the denoiser and of raw, and cosines.

    Sums (not means) so that workers can all-reduce them before taking the means.
    """

    FIELDS = ("loss", "raw_loss", "cos", "raw_cos", "tokens", "images")

    def __init__(self) -> None:
        self.values = torch.zeros(len(self.FIELDS), dtype=torch.float64)

    def add(self, raw: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> None:
        """raw, pred, target (B, h, w, C) of one batch."""
        raw, pred, target = raw.float(), pred.float(), target.float()
        n, tokens = raw.shape[0], raw.shape[0] * raw.shape[1] * raw.shape[2]
        self.values += torch.tensor(
            [
                float(denoise_loss(pred, target)) * n,
                float(denoise_loss(raw, target)) * n,
                float(token_cosine(pred, target).sum()),
                float(token_cosine(raw, target).sum()),
                float(tokens),
                float(n),
            ],
            dtype=torch.float64,
        )

    def metrics(self) -> dict[str, float]:
        """val_loss and val_raw_loss (means over images), val_cos and val_raw_cos (per token)."""
        loss, raw_loss, cos, raw_cos, tokens, n = self.values.tolist()
        if n == 0:
            nan = float("nan")
            return {
                "val_loss": nan,
                "val_raw_loss": nan,
                "val_cos": nan,
                "val_raw_cos": nan,
                "val_images": 0,
            }
        return {
            "val_loss": loss / n,
            "val_raw_loss": raw_loss / n,
            "val_cos": cos / tokens,
            "val_raw_cos": raw_cos / tokens,
            "val_images": int(n),
        }
