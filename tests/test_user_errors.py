"""Every job, run as its file or as ``dvt <command>``, refuses a missing input, an unknown key
and an invalid value with one line and exit code 2, before a model loads or Ray starts."""

from __future__ import annotations

import runpy
import time
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
NOWHERE = "/nonexistent/dvt-input"

CASES = [
    (
        "clean_dataset",
        ["--input", NOWHERE, "--output", "{tmp}/out", "--job", "smoke"],
        "does not exist",
    ),
    (
        "clean_dataset",
        ["--input", "{tmp}", "--output", "{tmp}/out", "--job", "smoke", "compute.actorz=2"],
        "unknown key 'actorz'",
    ),
    (
        "clean_dataset",
        ["--input", "{tmp}", "--output", "{tmp}/out", "--job", "smoke", "compute.actors=-1"],
        "compute.actors must be >= 1",
    ),
    ("train_denoiser", ["--input", NOWHERE, "--job", "train_smoke"], "no committed stage-1"),
    (
        "train_denoiser",
        ["--input", "{tmp}", "--job", "train_smoke", "train.epochz=1"],
        "unknown key 'epochz'",
    ),
    (
        "train_denoiser",
        ["--input", "{tmp}", "--job", "train_smoke", "train.init=ones"],
        "train.init must be one of",
    ),
    (
        "denoise_dataset",
        [
            "--input",
            NOWHERE,
            "--output",
            "{tmp}/out",
            "--denoiser",
            "{tmp}",
            "--job",
            "denoise_smoke",
        ],
        "does not exist",
    ),
    (
        "denoise_dataset",
        [
            "--input",
            "{tmp}/in",
            "--output",
            "{tmp}/out",
            "--denoiser",
            "{tmp}",
            "--job",
            "denoise_smoke",
        ],
        "no exported denoiser",
    ),
    (
        "denoise_dataset",
        [
            "--input",
            "{tmp}",
            "--output",
            "{tmp}/out",
            "--denoiser",
            "{tmp}",
            "--job",
            "denoise_smoke",
            "batch_size=0",
        ],
        "batch_size must be >= 1",
    ),
    ("evaluate", ["--features", NOWHERE, "--out", "{tmp}/r"], "no committed stage-1 runs"),
    (
        "evaluate",
        ["--features", "{tmp}", "--out", "{tmp}/r", "probez=false"],
        "unknown key 'probez'",
    ),
    (
        "evaluate",
        ["--features", "{tmp}", "--out", "{tmp}/r", "max_photos=3"],
        "max_photos must be >= 8",
    ),
    ("gc_output", ["--output", NOWHERE], "does not exist"),
    (
        "clean_dataset",
        ["--input", "{tmp}", "--output", "{tmp}/out", "--job", "nope"],
        "no job preset 'nope'",
    ),
    (
        "clean_dataset",
        ["--input", "{tmp}/in", "--output", "{tmp}/out", "--job", "smoke", "input.exclude=[raw/*]"],
        "no input file under",
    ),
    (
        "clean_dataset",
        [
            "--input",
            "{tmp}/in",
            "--output",
            "{tmp}/out",
            "--job",
            "smoke",
            "input.include=[*.png,*.webp]",
        ],
        "matches input.include=['*.png'",
    ),
    (
        "clean_dataset",
        [
            "--input",
            "{tmp}/in",
            "--output",
            "{tmp}/out",
            "--job",
            "smoke",
            "input.storage_options={{a: [}}",
        ],
        "not valid YAML",
    ),
]


@pytest.mark.parametrize("entry", ["job", "dvt"])
@pytest.mark.parametrize(
    ("job", "argv", "message"), CASES, ids=[f"{c[0]}-{c[2].split()[0]}" for c in CASES]
)
def test_a_user_error_is_one_line_and_exit_2(
    entry: str,
    job: str,
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ray

    ray_before = ray.is_initialized()  # the suite's own Ray may be up already
    (tmp_path / "in" / "raw").mkdir(parents=True)
    (tmp_path / "in" / "raw" / "a.jpg").write_bytes(b"patterns decide, not contents")
    args = [a.format(tmp=tmp_path) for a in argv]
    monkeypatch.setattr("sys.argv", [f"jobs/{job}.py", *args])
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        if entry == "dvt":  # the console command, as .venv/bin/dvt calls it
            (command,) = [c.name for c in COMMANDS.values() if c.job == job]
            main([command, *args])
        else:
            runpy.run_path(str(ROOT / "jobs" / f"{job}.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert ray.is_initialized() == ray_before  # refused before the job started Ray
    assert time.perf_counter() - start < 30  # and before any model loaded
