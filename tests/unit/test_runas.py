"""Who may submit to hosts that run jobs as their user, and who a launch runs as."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hpcbatch.core.runas import HostRunAs, launch_user, submit_refusal
from hpcbatch.inventory import InventoryError, load_inventory

LOGIN = HostRunAs("n1", "login", 1000)
SHARED = HostRunAs("n2", "submitter", 1000)


def test_a_personal_cluster_takes_everyone() -> None:
    assert submit_refusal(0, "root", "batch", [LOGIN]) is None
    assert submit_refusal(5, "daemon", "batch", [LOGIN]) is None


def test_root_and_system_accounts_are_refused_where_jobs_run_as_their_user() -> None:
    why = submit_refusal(0, "root", "batch", [LOGIN, SHARED])
    assert why is not None and "root may not submit" in why and "host n2" in why
    why = submit_refusal(999, "svc", "batch", [SHARED])
    assert why is not None and "svc (uid 999) is below the inventory's min_uid 1000" in why
    assert submit_refusal(1000, "alice", "batch", [SHARED]) is None


def test_launch_user() -> None:
    assert launch_user("submitter", "alice") == "alice"
    assert launch_user("login", "alice") is None


def test_inventory_run_as_and_min_uid(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(
        textwrap.dedent("""
        [defaults]
        run_as = "submitter"
        min_uid = 2000
        [[hosts]]
        name = "a"
        [[hosts]]
        name = "b"
        run_as = "login"
    """)
    )
    inv = load_inventory(path)
    assert [(h.run_as, h.min_uid) for h in inv.hosts.values()] == [
        ("submitter", 2000), ("login", 2000)
    ]  # fmt: skip
    path.write_text('[[hosts]]\nname = "a"\nrun_as = "everyone"\n')
    with pytest.raises(InventoryError, match="run_as"):
        load_inventory(path)
