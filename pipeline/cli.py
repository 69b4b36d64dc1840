"""The ``dvt`` command, and every job's entry point: ``dvt <command> [flags]`` runs what
``python jobs/<job>.py [flags]`` runs (the job files are thin: they call ``run_job``), with the
same flags, help, output and exit codes. A user error ends as one line on stderr and exit code
2; a run refused or stopped by the output's lease ends with exit code 75.

Importing this module loads neither Ray nor torch, so ``dvt --help`` is quick: each command
imports the Ray layer inside its function, and ``pipeline.distributed`` sets Ray's environment
defaults before any of its modules imports Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError
from pipeline.logs import log_info_to_stderr
from pipeline.store.lease import EXIT_LEASE_HELD, LeaseHeld, LeaseLost

EXIT_USER_ERROR = 2
"""A job refused its config or inputs (like argparse's usage errors)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``ConfigError`` (a bad preset, override, value or missing input) into one line
    on stderr and exit code 2; ``LeaseHeld`` (another run holds the output: this refresh does
    nothing) and ``LeaseLost`` (this run was stopped: another took the output over) into one
    line and exit code 75 (EX_TEMPFAIL: try later). Every other exception keeps its traceback
    (a real bug)."""
    try:
        yield
    except ConfigError as err:
        logging.shutdown()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except LeaseHeld as err:
        logging.shutdown()
        print(f"lease held: {err}", file=sys.stderr)
        sys.exit(EXIT_LEASE_HELD)
    except LeaseLost as err:
        logging.shutdown()
        print(f"error: lease lost: {err}", file=sys.stderr)
        sys.exit(EXIT_LEASE_HELD)


@dataclass(frozen=True)
class Command:
    """One job: ``dvt <name>`` and ``python jobs/<job>.py`` parse and run it alike."""

    name: str
    job: str
    """The job file, ``jobs/<job>.py``."""
    summary: str
    """Its line in ``dvt --help``."""
    description: str
    """Its ``--help`` description."""
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    intermixed: bool = False
    """Options may come between the positionals (``parse_intermixed_args``)."""
    logs: bool = True
    """Log INFO lines to stderr while it runs (a command that prints one value does not)."""

    def parser(self, prog: str | None = None) -> argparse.ArgumentParser:
        """The command's argument parser (``prog``: the name shown in its usage)."""
        parser = argparse.ArgumentParser(prog=prog, description=self.description)
        self.arguments(parser)
        return parser

    def __call__(self, argv: Sequence[str], prog: str | None = None) -> None:
        """Parse ``argv`` and run, user errors ending as one line and exit code 2 (75 for
        the output's lease); ``prog`` None names the running script in ``--help``."""
        parser = self.parser(prog)
        with user_errors():
            args = (
                parser.parse_intermixed_args(argv) if self.intermixed else parser.parse_args(argv)
            )
            if self.logs:
                log_info_to_stderr()
            self.run(args)


def _overrides(args: argparse.Namespace, flags: Sequence[tuple[str, Any]]) -> list[str]:
    """The positional ``key=value`` overrides, then one for each flag given."""
    return [*args.overrides, *(f"{key}={value}" for key, value in flags if value)]


def _job_arguments(
    parser: argparse.ArgumentParser, job: str, flags: Sequence[tuple[str, str]]
) -> None:
    """``--<flag>`` for each (flag, help), ``--job`` (default ``job``) and the overrides."""
    for flag, text in flags:
        parser.add_argument(f"--{flag}", help=text)
    parser.add_argument("--job", default=job, help="job preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")


# quickstart: jobs/quickstart.py


def _quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=int, default=2, help="how many sample photos")
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart"))
    parser.add_argument("overrides", nargs="*", help="job overrides, e.g. preset=smoke")


def _quickstart(args: argparse.Namespace) -> None:
    from pipeline.distributed.features import format_summary
    from pipeline.distributed.quickstart import run_quickstart

    summary = run_quickstart(args.photos, args.out, args.overrides)
    print(format_summary(summary))


# clean: jobs/clean_dataset.py


def _clean_arguments(parser: argparse.ArgumentParser) -> None:
    _job_arguments(
        parser,
        "quickstart",
        [
            ("input", "images folder/prefix (path, file://, s3://, ...)"),
            ("output", "output folder/prefix for committed runs"),
        ],
    )


def _clean(args: argparse.Namespace) -> None:
    from pipeline.distributed.clean import run_clean_job
    from pipeline.distributed.features import format_summary
    from pipeline.job_config import resolve_clean_job

    cfg = resolve_clean_job(
        args.job, _overrides(args, [("input.uri", args.input), ("output.uri", args.output)])
    )
    summary = run_clean_job(cfg)
    print(format_summary(summary))
    print(json.dumps(summary))


# train: jobs/train_denoiser.py


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _job_arguments(parser, "train", [("input", "output URI of clean_dataset (committed runs)")])


def _train(args: argparse.Namespace) -> None:
    from pipeline.distributed.train import format_train_summary, run_train_job
    from pipeline.job_config import TrainJobConfig, resolve_job

    overrides = _overrides(args, [("input.uri", args.input)])
    summary = run_train_job(resolve_job(TrainJobConfig, args.job, overrides))
    print(format_train_summary(summary))
    print(json.dumps(summary))


# denoise: jobs/denoise_dataset.py


def _denoise_arguments(parser: argparse.ArgumentParser) -> None:
    _job_arguments(
        parser,
        "denoise",
        [
            ("input", "images folder/prefix (path, file://, s3://, ...)"),
            ("output", "output folder/prefix for committed runs"),
            (
                "denoiser",
                "exported denoiser (train_denoiser's export) or a shipped one by name "
                "(dinov2_vits14)",
            ),
        ],
    )


def _denoise(args: argparse.Namespace) -> None:
    from pipeline.distributed.denoise import run_denoise_job
    from pipeline.distributed.features import format_summary
    from pipeline.job_config import DenoiseJobConfig, resolve_job

    overrides = _overrides(
        args,
        [("input.uri", args.input), ("output.uri", args.output), ("denoiser.uri", args.denoiser)],
    )
    summary = run_denoise_job(resolve_job(DenoiseJobConfig, args.job, overrides))
    print(format_summary(summary))
    print(json.dumps(summary))


# build: jobs/build_features.py


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    _job_arguments(
        parser,
        "build",
        [
            ("input", "images: a folder or URI"),
            ("output", "root of the sample, denoiser and features outputs"),
        ],
    )


def _build(args: argparse.Namespace) -> None:
    from pipeline.distributed.build import format_build_summary, run_build_job
    from pipeline.job_config import BuildJobConfig, resolve_job

    overrides = _overrides(args, [("input.uri", args.input), ("output_uri", args.output)])
    summary = run_build_job(resolve_job(BuildJobConfig, args.job, overrides))
    print(format_build_summary(summary))
    print(json.dumps(summary, default=str))  # the last line: one JSON summary


# evaluate: jobs/evaluate.py


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _job_arguments(
        parser,
        "evaluate",
        [
            ("features", "output URI of clean_dataset (committed runs)"),
            ("denoiser", "exported denoiser to evaluate beside raw and clean"),
            ("out", "report folder"),
        ],
    )


def _evaluate(args: argparse.Namespace) -> None:
    from pipeline.distributed.evaluate import run_evaluation
    from pipeline.job_config import EvaluateConfig, resolve_job

    overrides = _overrides(
        args, [("features.uri", args.features), ("denoiser.uri", args.denoiser), ("out", args.out)]
    )
    metrics = run_evaluation(resolve_job(EvaluateConfig, args.job, overrides))
    print(
        json.dumps(
            {
                k: metrics[k]
                for k in ("pev", "shift", "stereo", "stereo_windows", "masks", "g_agreement")
                if k in metrics
            },
            indent=2,
        )
    )


# gc: jobs/gc_output.py


def _gc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="output folder/prefix (path or URI)")
    parser.add_argument("--delete", action="store_true", help="remove them (default: list)")
    parser.add_argument("--storage-options", default="{}", help="fsspec options, YAML")


def _gc(args: argparse.Namespace) -> None:
    from pipeline.config import parse_value
    from pipeline.store.gc import gc_output

    report = gc_output(args.output, parse_value(args.storage_options) or {}, delete=args.delete)
    for path in report.orphans:
        print(path)
    print(
        json.dumps(
            {"sealed": report.sealed, "orphans": len(report.orphans), "removed": report.removed}
        )
    )


# submission-id: jobs/submission_id.py


def _submission_id_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.distributed.submission import SLOTS

    parser.add_argument("job", help="clean_dataset | denoise_dataset | train_denoiser | ...")
    parser.add_argument("--input", default="")
    parser.add_argument("--output", default="")
    parser.add_argument("--slot", default="hourly", choices=sorted(SLOTS))
    parser.add_argument("overrides", nargs="*")


def _submission_id(args: argparse.Namespace) -> None:
    from pipeline.distributed.submission import submission_id

    print(submission_id(args.job, args.input, args.output, args.overrides, args.slot))


COMMANDS = {
    command.name: command
    for command in (
        Command(
            "quickstart",
            "quickstart",
            "stage 1 on bundled photos (offline weights), then figures",
            "clean_dataset on sample photos, with pictures.",
            _quickstart_arguments,
            _quickstart,
        ),
        Command(
            "clean",
            "clean_dataset",
            "stage 1 over a dataset: images -> committed features",
            "DVT stage 1 over a dataset, with Ray Data.",
            _clean_arguments,
            _clean,
        ),
        Command(
            "train",
            "train_denoiser",
            "train the online denoiser on stage-1 runs, export it",
            "Train the DVT online denoiser (Ray Train).",
            _train_arguments,
            _train,
        ),
        Command(
            "denoise",
            "denoise_dataset",
            "online denoising over a dataset: images -> features",
            "Online DVT denoising over a dataset.",
            _denoise_arguments,
            _denoise,
        ),
        Command(
            "build",
            "build_features",
            "stage 1 on a sample, train a denoiser, denoise all",
            "Stage 1 on a sample, train, denoise all.",
            _build_arguments,
            _build,
        ),
        Command(
            "evaluate",
            "evaluate",
            "a report that shows and measures the artifacts",
            "Artifact evaluation report.",
            _evaluate_arguments,
            _evaluate,
        ),
        Command(
            "gc",
            "gc_output",
            "list (or --delete) the orphaned files of an output",
            "Orphaned files of a feature output.",
            _gc_arguments,
            _gc,
        ),
        Command(
            "submission-id",
            "submission_id",
            "an id for `ray job submit --submission-id`",
            "Print a submission id derived from a run, so that Ray refuses a duplicate submission.",
            _submission_id_arguments,
            _submission_id,
            intermixed=True,
            logs=False,
        ),
    )
}
"""``dvt <name>`` -> the command, in the order ``dvt --help`` lists them."""


def run_job(name: str) -> None:
    """A job file's entry point: ``python jobs/<job>.py ...`` is ``dvt <name> ...``."""
    COMMANDS[name](sys.argv[1:])


def dvt_parser() -> argparse.ArgumentParser:
    """``dvt``'s own parser: it lists the commands, one line each (each command parses its
    own flags)."""
    width = max(map(len, COMMANDS)) + 2
    listing = "\n".join(f"  {c.name:<{width}}{c.summary}" for c in COMMANDS.values())
    top = argparse.ArgumentParser(
        prog="dvt",
        usage="dvt [-h] <command> [flags]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Remove positional artifacts from ViT features at dataset scale (DVT on "
        f"Ray).\n\ncommands:\n{listing}",
        epilog="Each command runs what `python jobs/<job>.py` runs, with the same flags:\n"
        "`dvt <command> --help` lists them.",
    )
    commands = top.add_subparsers(
        dest="command", required=True, metavar="<command>", help=argparse.SUPPRESS
    )  # listed in the description
    for command in COMMANDS.values():
        commands.add_parser(command.name, add_help=False)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    """``dvt <command> [flags]`` (the console script); ``argv`` defaults to the command
    line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:], prog=f"dvt {argv[0]}")
        return
    top = dvt_parser()
    top.parse_args(argv)  # --help (exit 0), or no or an unknown command (exit 2)
    top.error("the command comes first: dvt <command> [flags]")


if __name__ == "__main__":  # python -m pipeline.cli <command> ...
    main()
