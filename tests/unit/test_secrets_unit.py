"""The sealing of secrets (controller/secrets.py) and their place in requests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from hpcbatch.controller.callers import ApiError
from hpcbatch.controller.secrets import Sealer
from hpcbatch.jobdefs import DefinitionOverrides, JobDefinition, request_from_definition
from hpcbatch.models import JobRequest


def test_a_sealed_value_opens_only_under_its_own_name_and_key(tmp_path: Path) -> None:
    sealer = Sealer(tmp_path / "secrets.key")
    sealed = sealer.seal("db-pass", "hunter2-value")
    assert "hunter2" not in sealed and sealer.unseal("db-pass", sealed) == "hunter2-value"
    assert stat.S_IMODE((tmp_path / "secrets.key").stat().st_mode) == 0o600
    assert sealer.seal("db-pass", "hunter2-value") != sealed  # a fresh nonce each time
    with pytest.raises(InvalidTag):
        sealer.unseal("other-name", sealed)  # a row copied under another name
    assert Sealer(tmp_path / "secrets.key").unseal("db-pass", sealed) == "hunter2-value"
    with pytest.raises(InvalidTag):
        Sealer(tmp_path / "another.key").unseal("db-pass", sealed)


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    Sealer(tmp_path / "k").seal("a", "b")
    os.chmod(tmp_path / "k", 0o640)
    with pytest.raises(ApiError, match="readable by others"):
        Sealer(tmp_path / "k").seal("a", "b")


def test_requests_and_definitions_carry_names_only() -> None:
    req = JobRequest.model_validate({"script": "true", "secrets": {"DB": "db-pass"}})
    assert req.secrets == {"DB": "db-pass"}
    with pytest.raises(ValueError, match="not a secret name"):
        JobRequest.model_validate({"script": "true", "secrets": {"DB": "no spaces"}})
    with pytest.raises(ValueError, match="variable name '1DB' is not valid"):
        JobRequest.model_validate({"script": "true", "secrets": {"1DB": "x"}})
    defn = JobDefinition.model_validate(
        {"name": "d", "command": ["true"], "secrets": {"A": "s1", "B": "s2"}}
    )
    over = DefinitionOverrides.model_validate({"definition": "d", "secrets": {"B": "s3"}})
    assert request_from_definition(defn, 1, over)["secrets"] == {"A": "s1", "B": "s3"}
