"""User paths are touched in a child with a deadline: a hang costs the agent the deadline."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from hpcbatch.transport.agent.protocol import BadRequest
from hpcbatch.transport.agent.userpaths import Checker, check_launch_paths, in_child, read_output


def test_a_check_that_hangs_is_cut_at_its_deadline() -> None:
    t0 = time.monotonic()
    with pytest.raises(BadRequest, match=r"did not answer in 0\.3 s") as err:
        in_child(lambda: time.sleep(30), "the job's paths", deadline_s=0.3)
    assert err.value.code == "bad_path" and time.monotonic() - t0 < 5


def test_results_and_refusals_come_back_from_the_child(tmp_path: Path) -> None:
    assert in_child(lambda: {"a": [1, "b"]}, "x") == {"a": [1, "b"]}
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(BadRequest, match=f"stdout path {fifo} is a FIFO") as err:
        in_child(lambda: check_launch_paths(str(tmp_path), {"stdout": "f"}), "paths")
    assert err.value.code == "bad_path"
    with pytest.raises(BadRequest, match="is a FIFO, not a regular file"):
        in_child(lambda: read_output(str(fifo), 0, 10), "reading stdout")
    with pytest.raises(BadRequest, match="ZeroDivisionError"):
        in_child(lambda: 1 // 0, "sums")


def test_launch_paths_resolve_against_the_working_directory(tmp_path: Path) -> None:
    got = check_launch_paths(str(tmp_path), {"stdout": "o.txt", "stderr": None})
    assert got == {"cwd": str(tmp_path), "stdout": str(tmp_path / "o.txt"), "stderr": None}
    assert check_launch_paths(str(tmp_path), {"stdout": "/dev/null"})["stdout"] == "/dev/null"
    with pytest.raises(BadRequest, match="is a directory"):
        check_launch_paths("/", {"stdout": "tmp"})
    (tmp_path / "o.txt").write_bytes(b"abc\xe9")
    assert read_output(str(tmp_path / "o.txt"), 1, 10) == {"data": "bc\xe9", "size": 4}
    assert read_output(str(tmp_path / "none"), 0, 10) == {"data": "", "size": 0}


def test_the_kept_checker_answers_every_launch_and_a_hung_one_is_replaced(tmp_path: Path) -> None:
    checker = Checker()
    try:
        want = {"cwd": str(tmp_path), "stdout": str(tmp_path / "o"), "stderr": None}
        assert checker.launch_paths(str(tmp_path), {"stdout": "o", "stderr": None}) == want
        first = checker._pid
        os.mkfifo(tmp_path / "f")
        with pytest.raises(BadRequest, match=r"stdout path .* is a FIFO") as err:
            checker.launch_paths(str(tmp_path), {"stdout": "f"})
        assert err.value.code == "bad_path"
        assert checker._pid == first  # one child for every launch, no fork per launch
        assert first is not None
        os.kill(first, signal.SIGSTOP)  # hung, as on a dead NFS server
        t0 = time.monotonic()
        with pytest.raises(BadRequest, match=r"did not answer in 0\.3 s") as err:
            checker.launch_paths(str(tmp_path), {"stdout": "o"}, deadline_s=0.3)
        assert err.value.code == "bad_path" and time.monotonic() - t0 < 5
        assert checker.launch_paths(str(tmp_path), {"stdout": "o", "stderr": None}) == want
        assert checker._pid not in (None, first)
        second = checker._pid
        assert second is not None
        os.kill(second, signal.SIGKILL)  # gone between launches (an admin's kill, OOM)
        time.sleep(0.1)
        assert checker.launch_paths(str(tmp_path), {"stdout": "o", "stderr": None}) == want
        assert checker._pid not in (None, first, second)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{first}") and time.monotonic() < deadline:
            time.sleep(0.05)  # killed, and reaped by a later check or launch
            with pytest.raises(BadRequest):
                checker.launch_paths(str(tmp_path / "missing"), {})
        assert not os.path.exists(f"/proc/{first}")
    finally:
        checker.close()
