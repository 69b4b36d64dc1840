"""The ``dvt`` console command (the installed ``.venv/bin/dvt``): it lists every job, runs each
as its job file does (the same flags, help, output and exit codes), and lists them without
loading Ray or torch. The job files are thin: one call each."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS
from pipeline.logs import pipeline_info_to_stderr

ROOT = Path(__file__).resolve().parents[1]
DVT = Path(sys.executable).with_name("dvt")
NOWHERE = "/nonexistent/dvt-input"
ENV = dict(os.environ, COLUMNS="100")  # the same help wrapping in every run


def dvt(*args: str) -> subprocess.CompletedProcess[str]:
    assert DVT.is_file(), f"no {DVT}: install the package (pip install --no-deps -e .)"
    return subprocess.run(
        [str(DVT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV
    )


def job_file(job: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=ENV,
    )


def test_dvt_help_lists_every_command_one_line_each() -> None:
    done = dvt("--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("usage: dvt")
    for command in COMMANDS.values():
        (line,) = [line for line in lines if line.split()[:1] == [command.name]]
        assert line.split(None, 1)[1] == command.summary, line
    assert list(COMMANDS) == [
        "quickstart",
        "clean",
        "train",
        "denoise",
        "build",
        "evaluate",
        "gc",
        "submission-id",
    ]


def test_dvt_help_loads_neither_ray_nor_torch() -> None:
    code = (
        "import sys\nfrom pipeline.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit as done:\n    assert done.code == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch')\n"
        "             or m.startswith('pipeline.distributed')), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


@pytest.mark.parametrize("argv", [[], ["bogus"], ["--", "clean"]])
def test_no_or_an_unknown_command_is_a_usage_error(argv: list[str]) -> None:
    done = dvt(*argv)
    assert done.returncode == 2 and "usage: dvt" in done.stderr, done.stderr
    assert not done.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_its_job_files_flags_and_help(name: str) -> None:
    job = COMMANDS[name].job
    from_dvt, from_job = dvt(name, "--help"), job_file(job, "--help")
    assert from_dvt.returncode == from_job.returncode == 0, from_dvt.stderr + from_job.stderr
    assert from_job.stdout.startswith(f"usage: {job}.py ")
    assert from_dvt.stdout.startswith(f"usage: dvt {name} ")
    same = from_job.stdout.replace(f"usage: {job}.py ", f"usage: dvt {name} ", 1)
    assert same.split() == from_dvt.stdout.split()  # the prog's length rewraps the usage only


def test_the_job_files_are_thin() -> None:
    """Each jobs/<job>.py is its docstring and one call, for exactly one command each."""
    files = sorted((ROOT / "jobs").glob("*.py"))
    assert sorted(path.stem for path in files) == sorted(c.job for c in COMMANDS.values())
    for path in files:
        text = path.read_text()
        assert "noqa" not in text, path.name
        doc, entry, call = ast.parse(text).body
        assert isinstance(doc, ast.Expr) and f"jobs/{path.name}" in ast.literal_eval(doc.value)
        assert ast.unparse(entry) == "from pipeline.cli import run_job"
        (name,) = [c.name for c in COMMANDS.values() if c.job == path.stem]
        assert ast.unparse(call) == f"if __name__ == '__main__':\n    run_job({name!r})"


def test_submission_id_is_the_same_from_dvt_and_the_job_file() -> None:
    argv = [
        "clean_dataset",
        "--input",
        "s3://bucket/images",
        "compute.actors=4",
        "--output",
        "s3://bucket/features",
        "--slot",
        "none",
        "preset=smoke",
    ]
    from_dvt, from_job = dvt("submission-id", *argv), job_file("submission_id", *argv)
    assert from_dvt.returncode == from_job.returncode == 0, from_dvt.stderr + from_job.stderr
    assert from_dvt.stdout == from_job.stdout
    assert from_dvt.stdout.startswith("dvt-clean-dataset-once-")
    assert not from_dvt.stderr


@pytest.mark.parametrize("entry", ["dvt", "job file"])
def test_a_missing_input_is_one_line_and_exit_2(entry: str, tmp_path: Path) -> None:
    argv = ["--input", NOWHERE, "--output", str(tmp_path / "out"), "--job", "smoke"]
    done = dvt("clean", *argv) if entry == "dvt" else job_file("clean_dataset", *argv)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: input {NOWHERE} does not exist: check --input (input.uri) and "
        "input.storage_options"
    ], done.stderr[-3000:]
    assert not done.stdout and not (tmp_path / "out").exists()


def test_the_ray_layer_sets_ray_defaults_a_user_value_wins() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED")
    }
    env["RAY_USAGE_STATS_ENABLED"] = "1"
    code = (
        "import os, sys\nimport pipeline.distributed\nassert 'ray' not in sys.modules\n"
        "print(os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'], "
        "os.environ['RAY_USAGE_STATS_ENABLED'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    assert done.stdout.split() == ["0", "1"]


def test_a_task_shows_the_pipelines_info_lines_while_it_runs(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """What a Ray task wraps its work in (the distillation step): the pipeline's INFO lines
    reach stderr, another library's do not, and the worker's loggers are as before after."""
    ours, theirs = logging.getLogger("pipeline.stages.distill"), logging.getLogger("botocore")
    before = logging.getLogger("pipeline").level
    with pipeline_info_to_stderr():
        ours.info("round 1 of 4")
        theirs.info("found credentials")
    ours.info("after the task")
    err = capfd.readouterr().err
    assert "INFO round 1 of 4" in err
    assert "found credentials" not in err and "after the task" not in err
    assert logging.getLogger("pipeline").level == before
