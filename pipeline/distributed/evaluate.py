"""The evaluation job on the Ray layer: ``pipeline.evaluation.job``'s steps, with the
evaluation inputs fitted by clean_dataset's pipeline and the photos listed as a job lists its
inputs."""

from __future__ import annotations

from typing import Any

from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.features import list_images
from pipeline.evaluation import job
from pipeline.job_config import EvaluateConfig, InputConfig


def run_evaluation(cfg: EvaluateConfig) -> dict[str, Any]:
    """Write the report folder under ``cfg.out``; return its metrics."""
    return job.run_evaluation(
        cfg, fit=run_clean_job, list_photos=lambda uri: list_images(InputConfig(uri=uri))
    )
