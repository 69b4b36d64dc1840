"""Print a submission id derived from a run, so that Ray refuses a duplicate submission.

    ray job submit --submission-id "$(python jobs/submission_id.py clean_dataset \\
        --input s3://bucket/images --output s3://bucket/features --slot hourly)" -- ...

The id is ``dvt-<job>-<slot>-<hash of job, input, output and overrides>``: a scheduler that
fires twice in the same slot (or a person re-running the same command) gets the same id, and
``ray job submit`` refuses an id that already exists. Overlapping runs in different slots are
made safe by the output's lease instead.
"""

from __future__ import annotations

import argparse

from pipeline.distributed.submission import SLOTS, submission_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="clean_dataset | denoise_dataset | train_denoiser | ...")
    parser.add_argument("--input", default="")
    parser.add_argument("--output", default="")
    parser.add_argument("--slot", default="hourly", choices=sorted(SLOTS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    print(submission_id(args.job, args.input, args.output, args.overrides, args.slot))


if __name__ == "__main__":
    main()
