"""What a step's hpcbatch-rsh clients leave of their remote commands' usage, added up
(transport/agent/rsh.py: note_usage writes, step_usage reads for srun's step end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcbatch.transport.agent import rsh


def test_notes_add_up_cpu_and_keep_the_largest_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = tmp_path / "srun_usage.1.0"
    where.mkdir()
    monkeypatch.setenv(rsh.STEP_USAGE, str(where))
    rsh.note_usage({"cpu_user_s": 1.5, "cpu_sys_s": 0.25, "mem_peak_bytes": 10e6, "x": 1})
    assert json.loads(next(where.iterdir()).read_text()) == {
        "cpu_user_s": 1.5, "cpu_sys_s": 0.25, "mem_peak_bytes": 10e6,
    }  # fmt: skip
    (where / "other.json").write_text(
        json.dumps({"cpu_user_s": 2.0, "cpu_sys_s": 0.5, "mem_peak_bytes": 30e6})
    )
    (where / "bad.json").write_text('{"cpu_user_s": "lots"}')  # left out, not trusted
    (where / "torn.json").write_text('{"cpu_user_s": 1')
    rsh.note_usage(None)  # an agent that could not tell (reaped elsewhere): no note
    assert rsh.step_usage(str(where)) == {
        "cpu_user_s": 3.5, "cpu_sys_s": 0.75, "mem_peak_bytes": 30e6,
    }  # fmt: skip
    assert not where.exists()  # read once, then gone


def test_no_directory_no_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rsh.STEP_USAGE, raising=False)
    rsh.note_usage({"cpu_user_s": 1.0, "cpu_sys_s": 0.0, "mem_peak_bytes": 1.0})
    assert list(tmp_path.iterdir()) == []
    assert rsh.step_usage(str(tmp_path / "none")) == {
        "cpu_user_s": 0.0, "cpu_sys_s": 0.0, "mem_peak_bytes": 0.0,
    }  # fmt: skip
