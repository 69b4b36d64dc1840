"""Train the online denoiser on committed stage-1 runs with Ray Train, then export it.

    python jobs/train_denoiser.py --input FEATURES_URI [--job train] [key=value ...]
    ray job submit --working-dir . -- python jobs/train_denoiser.py --input s3://... \\
        run.storage_path=s3://bucket/training compute.workers=4 compute.use_gpu=true

Overrides: ``train.epochs=20``, ``train.batch_size=64``, ``run.name=dinov2s``,
``run.export_uri=PATH_OR_URI`` ... Re-running with the same ``run.name`` and storage resumes
from the last checkpoint. Without a cluster a local Ray on 127.0.0.1 is started.
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("train")
