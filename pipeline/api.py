"""The public API, the one list of its names: ``pipeline.<name>`` loads each from here on
first use (``pipeline/__init__.py``), so a process that needs only the store never imports
torch or timm."""

from __future__ import annotations

from pipeline.engine_config import EngineConfig as EngineConfig
from pipeline.engine_config import FieldConfig as FieldConfig
from pipeline.engine_config import FitConfig as FitConfig
from pipeline.engine_config import ViewConfig as ViewConfig
from pipeline.engine_config import engine_preset as engine_preset
from pipeline.models.denoiser import DenoisedViT as DenoisedViT
from pipeline.models.denoiser import Denoiser as Denoiser
from pipeline.models.denoiser import DenoiserConfig as DenoiserConfig
from pipeline.models.denoiser import load_denoiser as load_denoiser
from pipeline.models.denoiser import shipped_denoisers as shipped_denoisers
from pipeline.models.engine import CleanResult as CleanResult
from pipeline.models.engine import clean_images as clean_images
from pipeline.models.vit import FeatureExtractor as FeatureExtractor
from pipeline.models.vit import load_extractor as load_extractor
