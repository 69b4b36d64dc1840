"""Clean a dataset: images under a URI -> committed Parquet features of a new run.

    python jobs/clean_dataset.py --input URI --output URI [--job quickstart] [key=value ...]
    ray job submit --working-dir . -- python jobs/clean_dataset.py --input ... --output ...

Overrides: ``preset=smoke``, ``model.weights=PATH_OR_URI``, ``compute.actors=4``,
``engine.fit.steps=100`` ... Without a cluster ($RAY_ADDRESS or compute.ray_address) a local
Ray on 127.0.0.1 is started. Re-running only processes images not yet committed.
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("clean")
