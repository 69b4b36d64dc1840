"""Print a submission id derived from a run, so that Ray refuses a duplicate submission.

    ray job submit --submission-id "$(python jobs/submission_id.py clean_dataset \\
        --input s3://bucket/images --output s3://bucket/features --slot hourly)" -- ...

The id is ``dvt-<job>-<slot>-<hash of job, input, output and overrides>``: a scheduler that
fires twice in the same slot (or a person re-running the same command) gets the same id, and
``ray job submit`` refuses an id that already exists. Overlapping runs in different slots are
made safe by the output's lease instead.
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("submission-id")
