"""Live changes laid over the inventory file (hpcbatch.inventory_edit): pure logic."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hpcbatch.inventory import InventoryError
from hpcbatch.inventory_edit import (
    diff,
    overlay,
    parse_value,
    resolve,
    resolve_skipping,
    without_host,
)

FILE = tomllib.loads(
    """
[[hosts]]
name = "n1"
[[hosts]]
name = "n2"
[[hosts]]
name = "n3"

[[compute_environments]]
name = "cpu"
hosts = ["n[1-2]"]

[[compute_environments]]
name = "solo"
hosts = ["n3"]

[[queues]]
name = "batch"
compute_environments = ["cpu"]
"""
)
PATH = Path("/etc/hpcbatch/inventory.toml")


def test_a_stored_entry_replaces_the_files_and_a_new_one_is_added_after() -> None:
    changes = [
        ("queues", "batch", {"name": "batch", "compute_environments": ["solo", "cpu"]}),
        ("queues", "fast", {"name": "fast", "compute_environments": ["solo"], "priority": 9}),
    ]
    inv = resolve(FILE, changes, PATH)
    assert list(inv.queues) == ["batch", "fast"]
    assert inv.queues["batch"].compute_environments == ("solo", "cpu")
    assert inv.queues["fast"].priority == 9
    assert FILE["queues"] == [{"name": "batch", "compute_environments": ["cpu"]}]  # untouched


def test_a_deletion_removes_the_files_entry_and_a_bad_change_names_the_field() -> None:
    inv = resolve(FILE, [("queues", "batch", None), ("queues", "q", {"name": "q",
                  "compute_environments": ["cpu"]})], PATH)  # fmt: skip
    assert list(inv.queues) == ["q"]
    with pytest.raises(InventoryError) as err:
        resolve(FILE, [("compute_environments", "cpu", None)], PATH)
    assert 'unknown compute environment "cpu"' in str(err.value)
    with pytest.raises(InventoryError) as err:
        resolve(FILE, [("queues", "x", {"name": "x", "compute_environments": ["cpu"],
                       "priority": 5000})], PATH)  # fmt: skip
    assert 'queues[1] (name "x"): field "priority"' in str(err.value)


def test_adding_an_environment_to_a_file_without_any_keeps_the_made_up_all() -> None:
    raw = {"hosts": [{"name": "a"}, {"name": "b"}]}
    doc = overlay(raw, [("compute_environments", "one", {"name": "one", "hosts": ["a"]})])
    assert [e["name"] for e in doc["compute_environments"]] == ["all", "one"]
    inv = resolve(raw, [("compute_environments", "one", {"name": "one", "hosts": ["a"]})], PATH)
    assert inv.compute_environments["all"].hosts == ("a", "b")
    assert inv.queues["default"].compute_environments == ("all", "one")


def test_removing_a_host_rewrites_the_environments_that_list_it() -> None:
    changes, problems = without_host(FILE, [], "n2")
    assert problems == []
    assert ("hosts", "n2", None) in changes
    assert ("compute_environments", "cpu", {"name": "cpu", "hosts": ["n1"]}) in changes
    inv = resolve(FILE, changes, PATH)
    assert "n2" not in inv.hosts and inv.compute_environments["cpu"].hosts == ("n1",)
    _, problems = without_host(FILE, [], "n3")
    assert problems == [
        "n3 is the only host of compute environment solo: give it other hosts, or delete it, first"
    ]


def test_changes_that_no_longer_fit_the_file_are_skipped_with_why() -> None:
    changes = [
        ("queues", "q", {"name": "q", "compute_environments": ["gone"]}),
        ("queues", "ok", {"name": "ok", "compute_environments": ["solo"]}),
    ]
    inv, skipped = resolve_skipping(FILE, changes, PATH)
    assert list(inv.queues) == ["batch", "ok"]
    assert len(skipped) == 1 and skipped[0].startswith("the stored entry of queue q no longer")


def test_diff_names_what_was_added_removed_and_changed() -> None:
    old = resolve(FILE, [], PATH)
    new = resolve(FILE, [("queues", "batch", {"name": "batch", "compute_environments":
                  ["cpu"], "priority": 3}), ("hosts", "n4", {"name": "n4"})], PATH)  # fmt: skip
    assert diff(old, new).lines() == ["host added: n4", "queue changed: batch"]
    assert diff(old, old).lines() == []


def test_command_line_values_are_toml_or_else_words() -> None:
    assert parse_value("10") == 10
    assert parse_value("{ a = 3 }") == {"a": 3}
    assert parse_value('["x", "y"]') == ["x", "y"]
    assert parse_value("FAIRSHARE") == "FAIRSHARE"


async def test_only_administrators_change_the_inventory() -> None:
    import os

    from hpcbatch.controller.apiargs import InventoryArgs, NoArgs
    from hpcbatch.controller.callers import ApiError, Caller
    from hpcbatch.controller.handlers_inventory import InventoryHandlers

    class NoEdits:  # never reached: the refusal comes first
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"{name} called for a non-administrator")

    async def no_state(name: str, enabled: bool, reason: str | None) -> None:
        raise AssertionError("queue state changed for a non-administrator")

    handlers = InventoryHandlers(NoEdits(), no_state)  # type: ignore[arg-type]
    someone = Caller(uid=os.getuid() + 4242, user="mallory")
    args = InventoryArgs(kind="queues", name="q", fields={"state": "DISABLED"})
    for op in (handlers.create, handlers.update, handlers.delete, handlers.revert):
        with pytest.raises(ApiError) as err:
            await op(args, someone)
        assert err.value.kind == "forbidden", op
    with pytest.raises(ApiError, match="only an administrator may reload the inventory"):
        await handlers.reload(NoArgs(), someone)
    with pytest.raises(ApiError, match="only an administrator may list the hosts'"):
        await handlers.listing(InventoryArgs(kind="hosts"), someone)


def test_tags_are_checked_like_every_field() -> None:
    from pydantic import ValidationError

    from hpcbatch.models import JobRequest

    assert JobRequest(script="x", tags={"project": "a b"}).tags == {"project": "a b"}
    for bad in ({"k": "\x1b[31m"}, {"": "x"}, {"k": "v" * 257}, {f"k{i}": "v" for i in range(51)}):
        with pytest.raises(ValidationError):
            JobRequest(script="x", tags=bad)
