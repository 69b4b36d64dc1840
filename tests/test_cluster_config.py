"""ray_cluster.yaml against the schema inside the installed Ray, and against pyproject's pins."""

from __future__ import annotations

import json
import re
import subprocess
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
    ray_spec = next(
        Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray"
    ).specifier
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


def test_every_node_type_has_its_own_profile_and_the_closed_security_group() -> None:
    """The head too: without a profile Ray attaches its default one (full EC2 and S3), and
    without SecurityGroupIds it creates a group with SSH open to the world."""
    cluster = _cluster()
    nodes = cluster["available_node_types"]
    head = cluster["head_node_type"]
    groups = {tuple(node["node_config"]["SecurityGroupIds"]) for node in nodes.values()}
    assert len(groups) == 1 and all(g.startswith("sg-") for g in next(iter(groups)))
    arns = {name: node["node_config"]["IamInstanceProfile"]["Arn"] for name, node in nodes.items()}
    assert arns[head].endswith("/dvt-pipeline-head")
    assert all(arn.endswith("/dvt-pipeline-worker") for name, arn in arns.items() if name != head)
    assert "IpPermissions" not in cluster["provider"].get("security_group", {})


def test_ray_runs_with_token_auth_on_every_node() -> None:
    cluster = _cluster()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cluster[key])
        assert "RAY_AUTH_MODE=token" in start
        assert "RAY_AUTH_TOKEN_PATH=$HOME/ray_auth_token" in start
    assert cluster["file_mounts"] == {"~/ray_auth_token": "~/.ray/auth_token"}
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]


class _CloudFormation(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, !GetAtt) read as plain values."""


for _tag in ("!Ref", "!Sub", "!GetAtt"):
    _CloudFormation.add_constructor(
        _tag,
        lambda loader, node, tag=_tag: (
            tag,
            loader.construct_scalar(node)
            if isinstance(node, yaml.ScalarNode)
            else loader.construct_sequence(node),
        ),
    )


def _statements(resource: dict) -> list[dict]:
    props = resource["Properties"]
    docs = (
        [props["PolicyDocument"]]
        if "PolicyDocument" in props
        else [p["PolicyDocument"] for p in props.get("Policies", [])]
    )
    return [st for doc in docs for st in doc["Statement"]]


def test_the_access_template_is_valid_and_least_privilege() -> None:
    """conf/aws/cluster-access.yaml passes cfn-lint (CloudFormation's own resource schemas),
    opens SSH to the SshCidr parameter only, passes the workers' role alone, and grants S3 on
    the two named buckets only."""
    path = ROOT / "conf" / "aws" / "cluster-access.yaml"
    lint = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    template = yaml.load(path.read_text(), Loader=_CloudFormation)  # a SafeLoader
    resources = template["Resources"]
    (group,) = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroup"]
    ssh = group["Properties"]["SecurityGroupIngress"]
    assert ssh == [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "CidrIp": ("!Ref", "SshCidr"),
            "Description": "SSH from the operators' addresses only",
        }
    ]
    assert "0.0.0.0/0" not in path.read_text()
    internal = [
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"
    ]
    assert all(p["SourceSecurityGroupId"] == ("!Ref", "ClusterSecurityGroup") for p in internal)
    statements = [
        st
        for r in resources.values()
        if r["Type"] in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy")
        for st in _statements(r)
    ]
    actions = [
        a
        for st in statements
        for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    ]
    assert not [a for a in actions if a.endswith(":*") or a == "*"]
    for st in statements:
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if any(a.startswith("s3:") for a in acts):
            assert all(
                r[0] == "!Sub" and ("${InputBucket}" in r[1] or "${OutputBucket}" in r[1])
                for r in res
            ), st
        if "iam:PassRole" in acts:
            assert acts == ["iam:PassRole"] and res == [("!GetAtt", "WorkerRole.Arn")]
        if any(a in ("ec2:TerminateInstances", "ec2:StopInstances") for a in acts):
            assert "aws:ResourceTag/ray-cluster-name" in st["Condition"]["StringEquals"]
    worker = resources["WorkerRole"]["Properties"]
    assert worker["ManagedPolicyArns"] == [("!Ref", "DataAccess")] and "Policies" not in worker


def test_submission_ids_repeat_within_a_slot_only() -> None:
    from datetime import UTC, datetime

    from pipeline.distributed.submission import submission_id

    at = datetime(2026, 11, 24, 13, 5, tzinfo=UTC)
    later = datetime(2026, 11, 24, 13, 55, tzinfo=UTC)
    args = ("clean_dataset", "s3://b/in", "s3://b/out", ["compute.actors=4"])
    assert submission_id(*args, "hourly", at) == submission_id(*args, "hourly", later)
    assert submission_id(*args, "minutely", at) != submission_id(*args, "minutely", later)
    assert submission_id(*args, "hourly", at) != submission_id(
        "clean_dataset", "s3://b/in", "s3://b/other", ["compute.actors=4"], "hourly", at
    )
    assert re.fullmatch(
        r"dvt-clean-dataset-20261124t13-[0-9a-f]{16}", submission_id(*args, "hourly", at)
    )
