"""A shared cluster's pure parts: strings shown to other users, where a client finds
the controller, who is an administrator, and what a definition shows to others.
The real-user, real-socket side is in tests/integration/test_shared_api.py."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from hpcbatch import locations
from hpcbatch.cli.admin import _render
from hpcbatch.cli.format import jobs_table
from hpcbatch.cli.show import render_job
from hpcbatch.controller.callers import Admins, Caller
from hpcbatch.controller.definitions import redacted
from hpcbatch.core.text import control_problem, printable
from hpcbatch.inventory import InventoryError, parse_inventory

EVIL = "ok\x1b]0;pwned\x07\u202egnp.exe\r"
HOSTS = '[[hosts]]\nname = "a"\n'


def test_control_characters_are_found_and_escaped() -> None:
    assert control_problem("plain name-1.2") is None
    assert control_problem(EVIL) == "contains a control character (\\x1b at position 2)"
    assert control_problem("tab\there") is not None
    shown = printable(EVIL)
    assert shown == "ok\\x1b]0;pwned\\x07\\u202egnp.exe\\x0d"
    assert printable("a\tb", tabs=True) == "a\tb" and printable("a\tb") == "a\\x09b"


def test_listings_and_show_never_print_raw_escapes() -> None:
    row = {"id": 1, "name": EVIL, "user": "alice", "queue": "q", "state": "FAILED",
           "reason": f"launch failed: {EVIL}", "nodes": 1}  # fmt: skip
    table = jobs_table([row])
    assert "\x1b" not in table and "\u202e" not in table and "\\x1b" in table
    shown = render_job({**row, "request": {"workdir": EVIL}, "transitions": [], "attempts": []})
    assert "\x1b" not in shown and "\r" not in shown
    private = render_job({**row, "private": True})
    assert "administrators only" in private and "Workdir" not in private


def test_the_client_finds_its_own_controller_then_the_system_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    for name in ("HPCBATCH_SOCKET", "HPCBATCH_HOME", "HPCBATCH_SYSTEM_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    personal = os.path.join(str(tmp_path), ".hpcbatch", "controller.sock")
    system = "/run/hpcbatch/controller.sock"  # the real default, not moved
    assert locations.system_socket() == system
    assert locations.socket_path(exists=lambda p: p == system) == system
    assert locations.socket_path(exists=lambda p: True) == personal  # one's own first
    assert locations.socket_path(exists=lambda p: False) == personal  # named in the error
    monkeypatch.setenv("HPCBATCH_HOME", "/srv/hb")
    assert locations.socket_path(exists=lambda p: p == system) == "/srv/hb/controller.sock"
    monkeypatch.setenv("HPCBATCH_SOCKET", "/x.sock")
    assert locations.socket_path(exists=lambda p: p == system) == "/x.sock"
    assert locations.SYSTEM_HOME == "/var/lib/hpcbatch"


def test_admins_are_listed_users_and_members_of_listed_groups() -> None:
    me = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(me.pw_gid).gr_name
    assert Admins.parse([me.pw_name]).includes(me.pw_name, me.pw_uid)
    assert Admins.parse([f"@{group}"]).includes(me.pw_name, me.pw_uid)  # primary group
    assert not Admins.parse(["@no-such-group-here", "someone"]).includes(me.pw_name, me.pw_uid)
    assert Admins.parse([f"@{group}"]).caller(me.pw_uid).listed
    assert Admins().caller(2**31 - 7).user == str(2**31 - 7)  # a uid with no account
    assert Caller(uid=0, user="root").admin
    assert not Caller(uid=4343, user="bob").admin or os.getuid() == 4343


def test_the_inventory_takes_admins_and_api_limits() -> None:
    inv = parse_inventory(
        'admins = ["carol", "@hpc-admins"]\n' + HOSTS + "[api]\nmax_connections_per_user = 9\n"
    )
    assert inv.admins == ("carol", "@hpc-admins")
    assert (inv.api.max_connections_per_user, inv.api.idle_timeout_s) == (9, 600.0)
    assert parse_inventory(HOSTS).api.max_connections_per_user == 128
    with pytest.raises(InventoryError, match=r"admins\[0\]"):
        parse_inventory('admins = ["bad name"]\n' + HOSTS)
    with pytest.raises(InventoryError, match="idle_timeout_s"):
        parse_inventory(HOSTS + "[api]\nidle_timeout_s = 0\n")


def test_another_users_definition_shows_no_environment_values() -> None:
    row = {
        "name": "d", "revision": 1, "arn": "d:1", "status": "ACTIVE", "user": "alice",
        "owner": "alice", "created": 0.0,
        "definition": {"command": ["true"], "environment": {"PW": "x1"},
                       "node_ranges": [{"range": "0", "env": {"K": "x2"}}]},
    }  # fmt: skip
    bob, alice = Caller(uid=4343, user="bob"), Caller(uid=4242, user="alice")
    assert redacted(row, alice) is row
    seen = redacted(row, bob)
    assert seen["definition"]["environment"] == {"PW": None} and seen["redacted"]
    assert seen["definition"]["node_ranges"][0]["env"] == {"K": None}
    assert "x1" not in repr(seen) and "x2" not in repr(seen)
    assert row["definition"]["environment"] == {"PW": "x1"}  # the stored row is untouched
    assert "shown to alice and administrators" in _render(seen)


def test_the_dashboard_detail_of_another_users_job_says_it_is_private() -> None:
    from rich.console import Console

    from hpcbatch.dashboard.colors import Palette
    from hpcbatch.dashboard.detail import PRIVATE, overview

    row = {"id": 7, "name": "theirs", "user": "alice", "queue": "q", "state": "RUNNING",
           "nodes": 3, "cpus": 2, "private": True}  # fmt: skip
    console = Console(record=True, width=200)
    console.print(overview(row, Palette(None)))
    text = console.export_text()
    assert "3 node(s) x 2 CPUs" in text and PRIVATE[:40] in text


def test_controller_system_takes_the_system_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    from argparse import Namespace
    from pathlib import Path

    from hpcbatch.cli.main import controller_paths

    for name in ("HPCBATCH_SYSTEM_HOME", "HPCBATCH_SYSTEM_SOCKET", "HPCBATCH_HOME"):
        monkeypatch.delenv(name, raising=False)
    system = Namespace(system=True, home=None, socket=None)
    assert controller_paths(system) == (
        Path("/var/lib/hpcbatch"),
        "/run/hpcbatch/controller.sock",
        Path("/etc/hpcbatch/inventory.toml"),
    )
    given = Namespace(system=True, home="/srv/hb", socket="/srv/hb.sock")
    assert controller_paths(given)[:2] == (Path("/srv/hb"), "/srv/hb.sock")
    monkeypatch.setenv("HPCBATCH_HOME", "/home/x/.hb")
    personal = Namespace(system=False, home=None, socket=None)
    assert controller_paths(personal) == (
        Path("/home/x/.hb"),
        None,
        Path("/home/x/.hb/inventory.toml"),
    )
