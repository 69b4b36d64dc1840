"""Clean features for a whole dataset at the online denoiser's cost: stage 1 on a sample, the
denoiser trained on it, then every image denoised, in one command.

    python jobs/build_features.py --input URI --output URI [--job build] [key=value ...]
    ray job submit --working-dir . -- python jobs/build_features.py --input s3://... \\
        --output s3://... sample=2000 'clean=[compute.num_gpus=1]' 'denoise=[compute.actors=8]'

Writes ``OUTPUT/sample`` (stage 1 on ``sample`` images spread over the listing),
``OUTPUT/denoiser`` (the export) and ``OUTPUT/features`` (every image). Each step is skipped
where its output is already committed, so a rerun resumes and a grown folder only costs its
new images. Overrides: ``sample=2000``, ``clean=[preset=shift]``, ``train=[train.epochs=20]``,
``denoise=[batch_size=64]``. Without a cluster a local Ray on 127.0.0.1 is started.
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("build")
