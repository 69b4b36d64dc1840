"""The names of an output's folders and files: one folder per run, its control files, and the
dataset-level artifact models beside the runs.

An output URI holds::

    OUTPUT/runs/<run_id>/config.json                   the resolved config (written first)
    OUTPUT/runs/<run_id>/part-<task>-<hash>.parquet    features, one row per image
    OUTPUT/runs/<run_id>/quarantine-<task>-<hash>.parquet  inputs that failed, with reasons
    OUTPUT/runs/<run_id>/_commits/<task>-<hash>.json   one per write task, after its files
    OUTPUT/runs/<run_id>/summary.json                  counters and timings (at the end)
    OUTPUT/runs/<run_id>/_manifest.json                the files and image ids of the run
    OUTPUT/runs/<run_id>/_COMMITTED                    written last: the run is complete
    OUTPUT/runs/<run_id>/_SEALED                       a dead run, closed by the next run
    OUTPUT/artifact_models/<model>-<weights>-<size>px-<settings>.safetensors
                                                       the dataset-level artifact model
"""

from __future__ import annotations

import posixpath

RUNS_DIR = "runs"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
COMMITS_DIR = "_commits"
MANIFEST = "_manifest.json"
SEALED = "_SEALED"
COMMITTED = "_COMMITTED"
ARTIFACT_MODELS_DIR = "artifact_models"


def run_folder(output_root: str, run_id: str) -> str:
    """The folder of run ``run_id`` under an output's bare path."""
    return posixpath.join(output_root, RUNS_DIR, run_id)


def artifact_model_uri(
    output_uri: str, model: str, weights_digest: str, image_size: int, settings_digest: str
) -> str:
    """Where an output keeps the artifact model of (model, weights, input size) estimated with
    the settings of ``settings_digest``: a deterministic name, so every later run (a refresh,
    a re-run after a crash) finds and reuses the same model instead of estimating another."""
    safe = model.replace("/", "_")
    name = f"{safe}-{weights_digest[:12]}-{image_size}px-{settings_digest[:12]}.safetensors"
    return posixpath.join(output_uri.rstrip("/"), ARTIFACT_MODELS_DIR, name)
