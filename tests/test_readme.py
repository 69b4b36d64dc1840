"""The README's commands are the product's front door: CI runs its first two as written
(``.ci/run``), and this test runs every other local command of it as written, in README
order, in a scratch folder, shortened only by the smoke presets the README names.

A command edited in the README is the command tested: nothing here keeps a copy of one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.samples import sample_photos
from pipeline.models.denoiser import denoiser_digest, load_denoiser
from pipeline.stages.distill import DISTILLED
from pipeline.store import column_to_numpy, read_feature_groups, read_features_table, select_runs

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

SHORTENED = {
    "quickstart": "preset=smoke model.weights={weights}",
    "clean_dataset": "--job smoke",
    "train_denoiser": "--job train_smoke",
    "denoise_dataset": "--job denoise_smoke",
    "evaluate": "--job evaluate_smoke",
    "build_features": "--job build_smoke",
    "gc_output": "",
    "submission_id": "",
}
"""What each job's README command gets appended: the README says so, word for word."""


def readme_commands(text: str = README) -> list[str]:
    """Every command of the bash blocks of a markdown text (the README's by default), in
    order: continuation lines joined, comments dropped, ``a && b`` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def local_job_commands() -> list[tuple[str, str]]:
    """(job, command) of every README command that runs a job on this machine: a job script
    under the venv's python, no shell variable of a benchmark's cache."""
    out = []
    for command in readme_commands():
        match = re.match(r"\.venv/bin/python jobs/(\w+)\.py\b", command)
        if match and "$" not in command:
            out.append((match.group(1), command))
    return out


def test_ci_runs_the_first_two_commands_as_written() -> None:
    quickstart, tests = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)[:2]
    assert quickstart.endswith("&& .venv/bin/python jobs/quickstart.py")
    assert tests.endswith("&& .venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci and quickstart in ci  # whole lines, verbatim
    assert ci.index(tests) < ci.index(quickstart)  # the suite first, then the front door
    assert any("outputs/quickstart/figures" in line for line in ci)  # pictures checked


def test_the_readme_is_a_front_page() -> None:
    """At most 250 lines: the rest lives in docs/, and every relative link resolves."""
    assert len(README.splitlines()) <= 250
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (page.parent / target).exists(), f"{page.name} links {target}"


def test_every_job_has_a_local_command_and_its_shortening_is_documented() -> None:
    jobs = {job for job, _ in local_job_commands()}
    assert jobs == set(SHORTENED), jobs
    for job, extra in SHORTENED.items():
        assert extra.replace("{weights}", "PATH") in README or not extra, job


def _scratch(tmp_path: Path) -> Path:
    """A folder laid out as a checkout's root for the commands: the venv, the jobs and conf
    (links), and ``./photos`` (8 bundled photos, mixed aspects) and ``./new_photos``."""
    for name in ("jobs", "conf"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    photos = sample_photos(10)
    (tmp_path / "photos").mkdir()
    (tmp_path / "new_photos").mkdir()
    for i, (name, photo) in enumerate(photos.items()):
        small = Image.fromarray(photo)
        small.thumbnail((160, 160))
        folder = "photos" if i < 8 else "new_photos"
        small.save(tmp_path / folder / f"{name}.png")
    return tmp_path


@pytest.mark.timeout(1500)  # a dozen jobs
@pytest.mark.usefixtures("local_ray")
def test_the_readme_commands_run_as_written(tmp_path: Path, dinov2_weights: Path) -> None:
    """Quickstart, clean, train, denoise, evaluate, build, gc and submission ids, one after
    another as a new user would type them, each with its smoke shortening appended; evaluate
    and build_features run twice (the second reuses or skips what the first committed). They
    join the session's Ray through ``RAY_ADDRESS``, as the README says a job joins a cluster
    (each starting its own local Ray would cost the suite minutes; CI runs the quickstart
    alone, as written, starting its own)."""
    import ray

    scratch = _scratch(tmp_path)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    outputs: dict[str, str] = {}

    def run(command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-4000:]}"
        return done

    for job, command in local_job_commands():
        command += " " + SHORTENED[job].format(weights=shlex.quote(str(dinov2_weights)))
        done = run(command)
        outputs[job] = outputs.get(job, "") + done.stdout
        _check(job, command, scratch, done.stdout)
        if "distill.rounds=" in command:  # the distillation's progress reaches the job's output
            progress = re.search(r"two-view distillation: round (\d+) of \1", done.stderr)
            assert progress, done.stderr[-4000:]
        if job == "evaluate" and "--denoiser" in command:  # again, the denoiser mirror-
            # averaged: the fitted evaluation inputs are reused, the same figures but its own
            first = json.loads((scratch / "outputs/report/metrics.json").read_text())
            run(command + " denoiser.flip=true")
            second = json.loads((scratch / "outputs/report/metrics.json").read_text())
            assert first["denoiser_flip"] is False and second["denoiser_flip"] is True
            assert (
                "averaged with its mirrored image"
                in (scratch / "outputs/report/report.md").read_text()
            )
            same = {m: v for m, v in first["pev"].items() if m != "denoised"}
            assert {m: second["pev"][m] for m in same} == pytest.approx(same)
            assert second["pev"]["denoised"] != pytest.approx(first["pev"]["denoised"])
        if job == "build_features":  # again: every step skips its committed work
            steps = json.loads(run(command).stdout.strip().splitlines()[-1])["steps"]
            assert steps["clean"]["done"] == 0 and steps["clean"]["skipped_committed"] == 4
            assert steps["train"]["skipped"] and steps["distill"]["skipped"]
            assert steps["denoise"]["done"] == 0 and steps["denoise"]["skipped_committed"] == 8
    assert set(outputs) == set(SHORTENED)


def _check(job: str, command: str, scratch: Path, stdout: str) -> None:
    """What each command must have made."""
    if job == "quickstart":  # two photos of different aspects, a picture of each
        photos = sorted(p.stem for p in (scratch / "outputs/quickstart/photos").glob("*.png"))
        figures = sorted(p.stem for p in (scratch / "outputs/quickstart/figures").glob("*.png"))
        assert len(photos) == 2 and figures == photos
        grids = read_feature_groups(str(scratch / "outputs/quickstart/features"), ["image_id"])
        assert len(grids) == 2  # the two aspects give two token grids
    elif job == "clean_dataset":
        output = re.search(r"--output (\S+)", command).group(1)
        columns = ["source_uri", "clean_hr"] if "upsample" in command else ["source_uri"]
        groups = read_feature_groups(str(scratch / output), columns)
        assert sum(t.num_rows for t in groups.values()) == 8
        if "upsample=2" in command:  # content at 2 x 2 cells per token
            (grid, table), *_ = groups.items()
            assert table.schema.field("clean_hr").type.shape[:2] == [2 * grid[0], 2 * grid[1]]
    elif job == "train_denoiser":
        export = scratch / "features/training/denoiser/export"
        assert (export / "denoiser.safetensors").is_file()
        assert json.loads((export / "denoiser.json").read_text())["model"] == "test_vit"
    elif job == "denoise_dataset":
        output = re.search(r"--output (\S+)", command).group(1)
        table = read_features_table(str(scratch / output), ["method", "clean"])
        assert table["method"].to_pylist() == ["denoiser", "denoiser"]
        if "dinov2_vits14" in command:  # the shipped denoiser: DINOv2-S/14's 384 channels
            assert table.schema.field("clean").type.shape[-1] == 384
    elif job == "evaluate" and "features-hr" in command:
        _check_fine_report(scratch / re.search(r"--out (\S+)", command).group(1))
    elif job == "evaluate":
        _check_report(scratch / "outputs" / "report")
    elif job == "build_features":  # the sample cleaned, a denoiser, every photo denoised
        export = scratch / "built/denoiser/denoiser.safetensors"
        groups = read_feature_groups(str(scratch / "built/features"), ["method", "clean"])
        assert export.is_file() and sum(t.num_rows for t in groups.values()) == 8
        for table in groups.values():  # mixed aspects: a table per token grid
            assert set(table["method"].to_pylist()) == {"denoiser"}
            assert np.isfinite(column_to_numpy(table["clean"]).astype(np.float32)).all()
        steps = json.loads(stdout.strip().splitlines()[-1])["steps"]
        assert steps["clean"]["done"] == steps["clean"]["inputs"] == 4  # the sample only
        assert not steps["train"]["skipped"] and steps["train"]["steps"] > 0
        assert steps["denoise"]["done"] == 8  # every photo
        assert "clean     4 done" in stdout and "denoise   8 done" in stdout
        if "distill.rounds=" in command:  # denoised by the distilled export, not the trained
            rounds = int(re.search(r"distill.rounds=(\d+)", command).group(1))
            distilled = load_denoiser(str(scratch / "built/distilled"))
            assert steps["distill"]["rounds"] == rounds and steps["distill"]["photos"] == 4
            assert len(distilled.meta[DISTILLED]["losses"]) == rounds * 6  # 6 epochs a round
            trained = load_denoiser(str(scratch / "built/denoiser"))
            (run,) = select_runs(str(scratch / "built/features"), method="denoiser")
            assert run.meta.denoiser_digest == denoiser_digest(distilled)
            assert denoiser_digest(distilled) != denoiser_digest(trained)
    elif job == "gc_output":
        assert json.loads(stdout.strip().splitlines()[-1])["removed"] == ("--delete" in command)
    elif job == "submission_id":
        assert re.fullmatch(r"dvt-clean-dataset-\d{8}t\d{2}-[0-9a-f]{16}", stdout.strip())


def _check_fine_report(out: Path) -> None:
    """clean_hr measured on its cells beside the four free upsamplers, and reported."""
    fine = json.loads((out / "metrics.json").read_text())["fine"]
    methods = [
        "raw_bilinear",
        "calib+tta_bilinear",
        "calib+tta_joint_bilateral",
        "subpatch_average",
        "clean_hr",
    ]
    assert fine["scale"] == 2 and fine["methods"] == methods
    for measure in ("stereo", "boundary"):
        assert set(fine[measure]) == set(methods)
        assert all(0.0 <= v <= 1.0 for v in fine[measure].values())
    for m in methods:  # a cell hit is a token hit: the within-a-token share is never lower
        assert fine["matching"][m]["pairs"] > 0
        assert 0.0 <= fine["matching"][m]["value"] <= fine["token_share"][m]["value"] <= 1.0
        assert fine["seconds_per_image"][m] > 0
    assert fine["boundary_views"] == 4 and np.isfinite(fine["pooled"]["pev"])
    text = (out / "report.md").read_text()
    assert "## Finer than a patch (2 x 2 cells per token)" in text
    assert "| fine matching, within one cell" in text


def _check_report(out: Path) -> None:
    """Every file of the report and every measure, beside every baseline."""
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["methods"] == [
        "raw",
        "clean",
        "raw_minus_g",
        "denoised",
        "calib",
        "tta",
        "calib+tta",
        "calib+flip",
        "raw_minus_mean_g",
    ]
    assert saved["pev_crops"] == 16 and saved["pev_photos"] == 8
    for key in ("pev", "pev_stderr", "matching", "stereo", "seconds_per_image"):
        assert set(saved[key]) == set(saved["methods"]), key
    assert set(saved["shift"]) >= {"raw", "denoised"}
    assert all(e > 0 for e in saved["pev_stderr"].values())
    assert all(0.0 <= s["value"] <= 1.0 for s in saved["matching"].values())
    assert saved["calibration"]["crops"] == 8 * 2
    assert set(saved["masks"]) == {"voc", "quokka", "all"}
    assert saved["mask_views"] == {"voc": 2, "quokka": 2, "all": 4}
    paired = saved["masks_paired"]["all"]
    assert paired["raw"]["diff"] == 0.0 and set(paired) == set(saved["methods"])
    for name in ("voc", "quokka", "all"):
        assert all(0.0 <= v <= 1.0 for v in saved["masks"][name].values())
    assert all(0.0 <= v <= 1.0 for v in saved["stereo"].values())
    windows = saved["stereo_windows"]
    assert saved["stereo_window_count"] == 2 and set(windows) == set(saved["methods"])
    assert windows["raw"]["minus_raw"] == 0.0 == windows["raw"]["minus_raw_stderr"]
    for s in windows.values():
        assert 0.0 <= s["value"] <= 1.0 and s["stderr"] >= 0.0
        assert s["minus_raw"] == pytest.approx(s["value"] - windows["raw"]["value"])
    assert np.isfinite(saved["g_agreement"])  # over the photos of the corpus's largest grid
    assert 2 <= saved["g_agreement_images"] <= 8
    assert saved["fit"]["images"] == 8
    report = (out / "report.md").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(figures) == 3 and "artifact_grid.png" in figures
    for name in figures:
        assert f"(figures/{name})" in report
    for word in (
        "Position-explained variance",
        "Shift consistency",
        "Stereo probe",
        "offset windows (- raw)",
        "Mask probe",
        "G agreement",
        "raw - G",
        "minus raw's on the same views",
        "Crop-pair matching",
        "calib+tta",
        "calib+flip",
        "raw - mean G",
        "seconds per image",
    ):
        assert word in report
