"""ray_cluster.yaml against the schema inside the installed Ray, and against pyproject's pins."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _cluster() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_valid_against_rays_own_schema() -> None:
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(_cluster(), json.loads(schema_path.read_text()))


def test_images_and_pins_agree_with_pyproject_and_this_ray() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python_spec = SpecifierSet(project["requires-python"])
    ray_spec = next(Requirement(d) for d in project["dependencies"]
                    if Requirement(d).name == "ray").specifier
    cluster = _cluster()
    docker = cluster["docker"]
    images = {docker["image"], docker["head_image"], docker["worker_image"]}
    for node in cluster["available_node_types"].values():
        images |= {v for k, v in node.get("docker", {}).items() if k.endswith("image")}
    for image in images:
        match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
        assert match, f"{image}: not a versioned rayproject/ray GPU image"
        ray_version, python = Version(match.group(1)), Version(f"{match[2]}.{match[3]}")
        assert ray_version == Version(ray.__version__)  # the client's Ray must match the nodes'
        assert ray_version in ray_spec and python in python_spec
        assert python == Version(f"{sys.version_info.major}.{sys.version_info.minor}")
    setup = " ".join(cluster["setup_commands"])
    assert f'"ray[default,data,train]=={ray.__version__}"' in setup
    readme = (ROOT / "README.md").read_text()
    for pin in re.findall(r'"((?:torch|torchvision)==[\d.]+)"', setup):
        assert pin.replace('"', "") in readme  # the same tested torch pair as the set-up


def test_dashboard_on_loopback_and_no_keys() -> None:
    cluster = _cluster()
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert "aws_secret_access_key" not in text.lower() and "AKIA" not in text
    for name, node in cluster["available_node_types"].items():
        if name != cluster["head_node_type"]:
            assert "IamInstanceProfile" in node["node_config"], name


def test_submission_ids_repeat_within_a_slot_only() -> None:
    from datetime import UTC, datetime

    from pipeline.distributed.submission import submission_id

    at = datetime(2026, 11, 24, 13, 5, tzinfo=UTC)
    later = datetime(2026, 11, 24, 13, 55, tzinfo=UTC)
    args = ("clean_dataset", "s3://b/in", "s3://b/out", ["compute.actors=4"])
    assert submission_id(*args, "hourly", at) == submission_id(*args, "hourly", later)
    assert submission_id(*args, "minutely", at) != submission_id(*args, "minutely", later)
    assert submission_id(*args, "hourly", at) != submission_id(
        "clean_dataset", "s3://b/in", "s3://b/other", ["compute.actors=4"], "hourly", at)
    assert re.fullmatch(r"dvt-clean-dataset-20261124t13-[0-9a-f]{16}",
                        submission_id(*args, "hourly", at))
