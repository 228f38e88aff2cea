"""Container images and runtimes: reference parsing, runtime choice, refusal, mounts."""

from __future__ import annotations

import pytest

from hpcbatch.core.containers import (
    DEFAULT_ORDER,
    ImageError,
    ImageRef,
    Mount,
    choose_runtime,
    parse_image,
    parse_mount,
    parse_mounts,
    runtimes_for,
    unrunnable,
)
from hpcbatch.models import ComputeEnvSpec, JobRequest


@pytest.mark.parametrize(
    ("text", "kind", "ref"),
    [
        ("alpine", "oci", "alpine"),
        ("alpine:3.20", "oci", "alpine:3.20"),
        ("localhost/hpcbatch-test:abc123", "oci", "localhost/hpcbatch-test:abc123"),
        ("reg.example.com:5000/team/tool:1.2", "oci", "reg.example.com:5000/team/tool:1.2"),
        ("docker://ghcr.io/x/y:tag", "oci", "ghcr.io/x/y:tag"),
        ("oci:nvcr.io/nvidia/pytorch:24.05-py3", "oci", "nvcr.io/nvidia/pytorch:24.05-py3"),
        (f"ubuntu@sha256:{'a' * 64}", "oci", f"ubuntu@sha256:{'a' * 64}"),
        ("/srv/images/debian", "dir", "/srv/images/debian"),
        ("/srv/images/debian/", "dir", "/srv/images/debian"),
        ("dir:/srv/images/x.sif", "dir", "/srv/images/x.sif"),
        ("/srv/images/lolcow.sif", "sif", "/srv/images/lolcow.sif"),
        ("sif:/srv/images/lolcow", "sif", "/srv/images/lolcow"),
    ],
)
def test_parse_image(text: str, kind: str, ref: str) -> None:
    assert parse_image(text) == ImageRef(kind, ref)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("alpine latest", "white space"),
        ("./rootfs", "absolute path"),
        ("dir:rootfs", "absolute path"),
        ("UPPER/case", "not an image name"),
        ("a::b", "not an image name"),
    ],
)
def test_parse_image_refuses(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_image(text)


def test_kinds_and_order() -> None:
    assert runtimes_for("oci") == ("podman", "docker", "apptainer", "singularity")
    assert runtimes_for("dir") == ("apptainer", "singularity", "ch-run", "bwrap")
    assert runtimes_for("sif") == ("apptainer", "singularity")
    assert runtimes_for("dir", ["bwrap", "ch-run", "podman"]) == ("bwrap", "ch-run")
    assert DEFAULT_ORDER[0] == "podman"


def test_choose_runtime_follows_the_order_and_the_facts() -> None:
    found = {"bwrap": "/usr/bin/bwrap", "ch-run": "/usr/bin/ch-run", "podman": "/usr/bin/podman"}
    oci, dir_ = parse_image("alpine"), parse_image("/img")
    assert choose_runtime(oci, found) == ("podman", "/usr/bin/podman")
    assert choose_runtime(dir_, found) == ("ch-run", "/usr/bin/ch-run")
    assert choose_runtime(dir_, found, ["bwrap", "ch-run"]) == ("bwrap", "/usr/bin/bwrap")
    # The order is also what is allowed: a runtime left out is never used.
    assert choose_runtime(oci, found, ["docker", "bwrap"]) is None
    assert choose_runtime(parse_image("/x.sif"), found) is None


def test_unrunnable_names_the_hosts_and_what_they_have() -> None:
    sif = parse_image("/x.sif")
    why = unrunnable(sif, [("node1", {"bwrap": "/b"}, None), ("node2", {}, None)])
    assert why is not None
    assert "a SIF file (/x.sif)" in why and "apptainer, singularity" in why
    assert "node1 (has bwrap); node2 (has none)" in why
    why = unrunnable(sif, [("n1", {"apptainer": "/a"}, ["bwrap"])])
    assert why is not None and "n1 (has apptainer; its compute environment allows bwrap)" in why
    assert unrunnable(sif, [("n1", {}, None), ("n2", {"apptainer": "/a"}, None)]) is None
    assert unrunnable(sif, []) is None


@pytest.mark.parametrize(
    ("text", "mount"),
    [
        ("/data", Mount("/data", "/data")),
        ("/data:/in", Mount("/data", "/in")),
        ("/data:/in:ro", Mount("/data", "/in", True)),
        ("/data:ro", Mount("/data", "/data", True)),
        ("/data//x/:/in/./y:rw", Mount("/data/x", "/in/y")),
    ],
)
def test_parse_mount(text: str, mount: Mount) -> None:
    assert parse_mount(text) == mount


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data:/in", "source must be an absolute path"),
        ("/data:in", "destination must be an absolute path"),
        ("/a:/b:/c", "expected SRC"),
        ("/a/../etc:/b", "'..'"),
        (":ro", "expected SRC"),
    ],
)
def test_parse_mount_refuses(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_mount(text)


def test_parse_mounts_splits_commas_and_refuses_two_at_one_place() -> None:
    assert parse_mounts(["/a:/x,/b:/y:ro", "/c"]) == (
        Mount("/a", "/x"),
        Mount("/b", "/y", True),
        Mount("/c", "/c"),
    )
    with pytest.raises(ImageError, match="/x is the destination of two mounts"):
        parse_mounts(["/a:/x", "/b:/x"])


def test_job_request_checks_image_and_mounts() -> None:
    req = JobRequest(script="true", image=" alpine:3 ", mounts=["/a:/x,/b:ro"])
    assert req.image == "alpine:3"
    assert req.mounts == ["/a:/x", "/b:/b:ro"]
    with pytest.raises(ValueError, match="image 'Rootfs': not an image name"):
        JobRequest(script="true", image="Rootfs")
    with pytest.raises(ValueError, match="give an image too"):
        JobRequest(script="true", mounts=["/a"])
    with pytest.raises(ValueError, match="mount 'a': the source must be an absolute path"):
        JobRequest(script="true", image="alpine", mounts=["a"])


def test_compute_environment_runtime_order() -> None:
    ce = ComputeEnvSpec(name="c", hosts=["n1"], container_runtimes=["bwrap", "podman"])
    assert ce.container_runtimes == ["bwrap", "podman"]
    with pytest.raises(ValueError, match="container_runtimes"):
        ComputeEnvSpec(name="c", hosts=["n1"], container_runtimes=["lxc"])  # type: ignore[list-item]


def test_facts_carry_runtime_versions_and_unusable_runtimes() -> None:
    from hpcbatch.core.facts import FactsError, facts_from_agent

    raw = {
        "cpus": 2,
        "memory_mb": 1024,
        "runtimes": {"podman": "/usr/bin/podman"},
        "runtime_versions": {"podman": "podman version 4.3.1", "docker": "Docker 28"},
        "runtimes_unusable": {"docker": "no usable docker daemon socket at /run/docker.sock"},
    }
    facts = facts_from_agent(raw)
    assert facts.runtimes == {"podman": "/usr/bin/podman"}
    assert facts.runtime_versions["podman"] == "podman version 4.3.1"
    assert "docker" in facts.runtimes_unusable
    with pytest.raises(FactsError, match="'runtime_versions' should map names to versions"):
        facts_from_agent({**raw, "runtime_versions": ["podman"]})
