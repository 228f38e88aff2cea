"""Tests for hpcbatch.inventory: loading, resolution, and the wording of every error."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch.inventory import (
    DEFAULT_ENV_NAME,
    DEFAULT_QUEUE_NAME,
    InventoryError,
    ResolvedInventory,
    load_inventory,
    parse_inventory,
    resolve_inventory,
)
from hpcbatch.models import Inventory

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example-cluster.toml"


@pytest.fixture(autouse=True)
def _user_and_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A known current user and home, whatever the machine running the tests."""
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, "alice")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(tmp_path: Path, text: str, name: str = "inventory.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> ResolvedInventory:
    return load_inventory(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    """The error lines for an invalid inventory, with the tmp directory taken out."""
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err) == "\n".join(err.problems)
    return [line.replace(str(tmp_path) + os.sep, "") for line in err.problems]


def one_problem(tmp_path: Path, text: str) -> str:
    lines = problems(tmp_path, text)
    assert len(lines) == 1, lines
    return lines[0]


TWO_HOSTS = """
[[hosts]]
name = "node1"

[[hosts]]
name = "node2"
"""


# --------------------------------------------------------------------------- resolution


def test_minimal_inventory_defaults(tmp_path: Path) -> None:
    inv = load(tmp_path, '[[hosts]]\nname = "node1"\n')
    host = inv.hosts["node1"]
    assert host.address == "node1"
    assert host.port == 22
    assert host.user == "alice"
    assert host.identity is None and host.known_hosts is None and host.ssh_config is None
    assert host.work_dir == "~/.hpcbatch"
    assert host.python == "python3"
    assert host.labels == {} and host.fabric is None
    assert (host.cpus, host.memory_mb, host.gpus) == (None, None, None)
    assert list(inv.compute_environments) == [DEFAULT_ENV_NAME]
    assert inv.compute_environments["all"].hosts == ("node1",)
    assert inv.compute_environments["all"].enabled is True
    assert list(inv.queues) == [DEFAULT_QUEUE_NAME]
    assert inv.queues["default"].compute_environments == ("all",)
    assert inv.default_queue == "default"
    assert inv.path == tmp_path / "inventory.toml"


def test_defaults_section_and_host_overrides(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        [defaults]
        user = "hpc"
        port = 2200
        work_dir = "/scratch/hpcbatch"
        python = "/usr/bin/python3"

        [[hosts]]
        name = "node1"
        address = "10.0.0.1"

        [[hosts]]
        name = "node2"
        address = "10.0.0.2"
        user = "root2"
        port = 22
        work_dir = "~/work"
        python = "python3.12"
        labels = { gpu = "h100" }
        fabric = "ib-a"
        cpus = 64
        memory_mb = 512000
        gpus = 8
        """,
    )
    one, two = inv.hosts["node1"], inv.hosts["node2"]
    assert (one.address, one.port, one.user, one.work_dir, one.python) == (
        "10.0.0.1",
        2200,
        "hpc",
        "/scratch/hpcbatch",
        "/usr/bin/python3",
    )
    assert (two.port, two.user, two.work_dir, two.python) == (22, "root2", "~/work", "python3.12")
    assert two.labels == {"gpu": "h100"} and two.fabric == "ib-a"
    assert (two.cpus, two.memory_mb, two.gpus) == (64, 512000, 8)


def test_local_paths_resolved(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        [defaults]
        identity = "~/.ssh/id_ed25519"
        known_hosts = "keys/known_hosts"
        ssh_config = "/etc/hpcbatch/ssh_config"

        [[hosts]]
        name = "node1"

        [[hosts]]
        name = "node2"
        identity = "node2.key"
        known_hosts = "~/kh"
        """,
    )
    home = tmp_path / "home"
    one, two = inv.hosts["node1"], inv.hosts["node2"]
    assert one.identity == home / ".ssh" / "id_ed25519"
    assert one.known_hosts == tmp_path / "keys" / "known_hosts"
    assert one.ssh_config == Path("/etc/hpcbatch/ssh_config")
    assert two.identity == tmp_path / "node2.key"
    assert two.known_hosts == home / "kh"
    assert two.ssh_config == Path("/etc/hpcbatch/ssh_config")


def test_tilde_of_unknown_user(tmp_path: Path) -> None:
    text = '[defaults]\nidentity = "~nosuchuser-hpcbatch/k"\n[[hosts]]\nname = "a"\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: defaults: field "identity": cannot expand "~" in "~nosuchuser-hpcbatch/k"'
    )
    text = '[[hosts]]\nname = "a"\nknown_hosts = "~nosuchuser-hpcbatch/kh"\n'
    assert one_problem(tmp_path, text).startswith(
        'inventory.toml: hosts[0] (name "a"): field "known_hosts": cannot expand "~"'
    )


def test_relative_inventory_path_gives_absolute_local_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inv").mkdir()
    write(tmp_path / "inv", '[defaults]\nidentity = "k"\n[[hosts]]\nname = "n"\n')
    monkeypatch.chdir(tmp_path)
    inv = load_inventory("inv/inventory.toml")
    assert inv.hosts["n"].identity == tmp_path / "inv" / "k"
    assert inv.path == Path("inv/inventory.toml")


def test_remote_paths_keep_tilde(tmp_path: Path) -> None:
    inv = load(tmp_path, '[[hosts]]\nname = "n"\nwork_dir = "~/x"\npython = "~/venv/bin/python"\n')
    assert inv.hosts["n"].work_dir == "~/x"
    assert inv.hosts["n"].python == "~/venv/bin/python"


def test_compute_environments_hostlist_selector_union(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        [[hosts]]
        name = "node01"
        labels = { kind = "cpu" }
        [[hosts]]
        name = "node02"
        labels = { kind = "cpu" }
        [[hosts]]
        name = "node03"
        labels = { kind = "cpu", mem = "big" }
        [[hosts]]
        name = "gpu1"
        labels = { kind = "gpu" }

        [[compute_environments]]
        name = "listed"
        hosts = ["node[02-03]", "node01,node02"]

        [[compute_environments]]
        name = "selected"
        selector = { kind = "cpu", mem = "big" }
        state = "DISABLED"
        max_vcpus = 16

        [[compute_environments]]
        name = "both"
        hosts = ["gpu1"]
        selector = { kind = "cpu" }
        """,
    )
    envs = inv.compute_environments
    assert envs["listed"].hosts == ("node02", "node03", "node01")
    assert envs["selected"].hosts == ("node03",)
    assert envs["selected"].enabled is False and envs["selected"].max_vcpus == 16
    assert envs["both"].hosts == ("gpu1", "node01", "node02", "node03")
    assert list(inv.queues) == ["default"]
    assert inv.queues["default"].compute_environments == ("listed", "selected", "both")
    assert inv.queue_hosts("default") == ("node02", "node03", "node01", "gpu1")  # not "selected"
    assert inv.queue_hosts("default", include_disabled=True) == (
        "node02",
        "node03",
        "node01",
        "gpu1",
    )


def test_queues_and_default_queue(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        TWO_HOSTS
        + """
        [[compute_environments]]
        name = "a"
        hosts = ["node1"]
        [[compute_environments]]
        name = "b"
        hosts = ["node2"]

        [[queues]]
        name = "low"
        compute_environments = ["b"]
        [[queues]]
        name = "high"
        priority = 1000
        compute_environments = ["a", "b"]
        state = "DISABLED"
        policy = "FAIRSHARE"
        default_time_limit_s = 60
        max_running = 3
        max_vcpus = 9
        """,
    )
    assert inv.default_queue == "low"  # the first declared queue
    high = inv.queues["high"]
    assert high.compute_environments == ("a", "b")
    assert (high.priority, high.enabled, high.policy) == (1000, False, "FAIRSHARE")
    assert (high.default_time_limit_s, high.max_running, high.max_vcpus) == (60, 3, 9)
    assert inv.queues["low"].priority == 1 and inv.queues["low"].enabled


def test_default_queue_explicit(tmp_path: Path) -> None:
    text = (
        'default_queue = "b"\n'
        + TWO_HOSTS
        + (
            '[[queues]]\nname = "a"\ncompute_environments = ["all"]\n'
            '[[queues]]\nname = "b"\ncompute_environments = ["all"]\n'
        )
    )
    inv = load(tmp_path, text)
    assert inv.default_queue == "b"
    assert inv.queues["a"].compute_environments == ("all",)


def test_default_queue_naming_made_up_queue(tmp_path: Path) -> None:
    inv = load(tmp_path, 'default_queue = "default"\n' + TWO_HOSTS)
    assert inv.default_queue == "default"


def test_queue_fabric_ok(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        [[hosts]]
        name = "a"
        fabric = "ib-a"
        [[queues]]
        name = "mpi"
        compute_environments = ["all"]
        fabric = "ib-a"
        """,
    )
    assert inv.queues["mpi"].fabric == "ib-a"


def test_same_address_different_ports_ok(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        [[hosts]]
        name = "a"
        address = "127.0.0.1"
        port = 2201
        [[hosts]]
        name = "b"
        address = "127.0.0.1"
        port = 2202
        """,
    )
    assert [h.port for h in inv.hosts.values()] == [2201, 2202]


def test_resolved_is_frozen(tmp_path: Path) -> None:
    inv = load(tmp_path, TWO_HOSTS)
    with pytest.raises(AttributeError):
        inv.default_queue = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        inv.hosts["node1"].port = 1  # type: ignore[misc]
    hash(inv.hosts["node1"])
    hash(inv.compute_environments["all"])
    hash(inv.queues["default"])


def test_parse_and_resolve_entry_points(tmp_path: Path) -> None:
    inv = parse_inventory('[[hosts]]\nname = "n"\nidentity = "k"\n', tmp_path / "x.toml")
    assert inv.hosts["n"].identity == tmp_path / "k"
    model = Inventory.model_validate({"hosts": [{"name": "n"}]})
    assert resolve_inventory(model, path=tmp_path / "y.toml").hosts["n"].user == "alice"


def test_example_cluster_loads() -> None:
    inv = load_inventory(EXAMPLE)
    assert inv.default_queue == "batch"
    gpu_hosts = [h for h in inv.hosts.values() if h.labels.get("gpu")]
    assert len(gpu_hosts) >= 4
    fabrics = {h.fabric for h in inv.hosts.values()} - {None}
    assert len(fabrics) >= 2
    assert len(inv.compute_environments) >= 3
    assert len(inv.queues) >= 3
    assert any(not env.enabled for env in inv.compute_environments.values())
    for name, queue in inv.queues.items():
        assert inv.queue_hosts(name, include_disabled=True)
        assert bool(inv.queue_hosts(name)) == any(
            inv.compute_environments[env].enabled for env in queue.compute_environments
        )


# --------------------------------------------------------------------------- file errors


def test_inventory_error_from_one_string() -> None:
    err = InventoryError("inventory.toml: broken")
    assert err.problems == ("inventory.toml: broken",)
    assert str(err) == "inventory.toml: broken"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert str(info.value) == f"{path}: inventory file not found"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_HOSTS)
    path.chmod(0)
    with pytest.raises(InventoryError, match="cannot read inventory: Permission denied"):
        load_inventory(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_bytes(b'[[hosts]]\nname = "\xff"\n')
    with pytest.raises(
        InventoryError, match=r"inventory.toml: not valid UTF-8 \(line 2, byte 18\)"
    ):
        load_inventory(path)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    line = one_problem(tmp_path, '[[hosts]]\nname = "a"\nport = \n')
    assert line.startswith("inventory.toml: invalid TOML: ")
    assert "line 3, column 8" in line


def test_toml_duplicate_key(tmp_path: Path) -> None:
    line = one_problem(tmp_path, '[[hosts]]\nname = "a"\nname = "b"\n')
    assert line.startswith("inventory.toml: invalid TOML: ") and "line 3" in line


def test_huge_integer(tmp_path: Path) -> None:
    line = one_problem(tmp_path, "x = " + "9" * 5000 + "\n")
    assert line.startswith("inventory.toml: invalid TOML: Exceeds the limit")


def test_deeply_nested_toml(tmp_path: Path) -> None:
    line = one_problem(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert line.startswith("inventory.toml: ")


# --------------------------------------------------------------------------- validation errors


def test_port_out_of_range(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[hosts]]\nname = "gpu1"\nport = 70000\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: hosts[2] (name "gpu1"): field "port": '
        "Input should be less than or equal to 65535"
    )


def test_defaults_port_out_of_range(tmp_path: Path) -> None:
    assert one_problem(tmp_path, "[defaults]\nport = 0\n" + TWO_HOSTS) == (
        'inventory.toml: defaults: field "port": Input should be greater than or equal to 1'
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('port = "22"', 'field "port": Input should be a valid integer (got "22")'),
        ("port = 22.0", 'field "port": Input should be a valid integer (got 22.0)'),
        ("port = true", 'field "port": Input should be a valid integer (got true)'),
        ("gpus = -1", 'field "gpus": Input should be greater than or equal to 0'),
        ("cpus = 0", 'field "cpus": Input should be greater than or equal to 1'),
        ("user = 5", 'field "user": Input should be a valid string (got 5)'),
        ('labels = "gpu"', 'field "labels": Input should be a valid dictionary (got "gpu")'),
        (
            "labels = { gpu = true }",
            'field "labels.gpu": Input should be a valid string (got true)',
        ),
        (
            "address = 1979-05-27",
            'field "address": Input should be a valid string (got 1979-05-27)',
        ),
    ],
)
def test_bad_host_field_types(tmp_path: Path, line: str, expected: str) -> None:
    text = f'[[hosts]]\nname = "gpu1"\n{line}\n'
    assert one_problem(tmp_path, text) == f'inventory.toml: hosts[0] (name "gpu1"): {expected}'


def test_unknown_field_with_suggestion(tmp_path: Path) -> None:
    assert one_problem(tmp_path, '[[hosts]]\nname = "a"\nprot = 22\n') == (
        'inventory.toml: hosts[0] (name "a"): field "prot": unknown field (did you mean "port"?)'
    )


def test_unknown_field_without_suggestion(tmp_path: Path) -> None:
    assert one_problem(tmp_path, '[[hosts]]\nname = "a"\nzzzz = 1\n') == (
        'inventory.toml: hosts[0] (name "a"): field "zzzz": unknown field'
    )


def test_unknown_top_level_and_defaults_fields(tmp_path: Path) -> None:
    lines = problems(tmp_path, 'default_que = "x"\n[defaults]\nusr = "a"\n' + TWO_HOSTS)
    assert lines == [
        'inventory.toml: defaults: field "usr": unknown field (did you mean "user"?)',
        'inventory.toml: field "default_que": unknown field (did you mean "default_queue"?)',
    ]


def test_missing_hosts(tmp_path: Path) -> None:
    assert one_problem(tmp_path, "# nothing\n") == 'inventory.toml: field "hosts": Field required'


def test_empty_hosts(tmp_path: Path) -> None:
    line = one_problem(tmp_path, "hosts = []\n")
    assert line.startswith('inventory.toml: field "hosts": List should have at least 1 item')


def test_hosts_as_single_table(tmp_path: Path) -> None:
    assert one_problem(tmp_path, '[hosts]\nname = "a"\n') == (
        'inventory.toml: field "hosts": Input should be a valid list (got a table); '
        "write [[hosts]] (an array of tables), not [hosts]"
    )


def test_host_missing_name(tmp_path: Path) -> None:
    assert one_problem(tmp_path, '[[hosts]]\naddress = "x"\n') == (
        'inventory.toml: hosts[0]: field "name": Field required'
    )


def test_bad_host_name(tmp_path: Path) -> None:
    line = one_problem(tmp_path, '[[hosts]]\nname = "node 1"\n')
    assert line.startswith('inventory.toml: hosts[0] (name "node 1"): field "name": "node 1" is')
    assert "not a valid name" in line


def test_bad_state_literal(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "c"\nhosts = ["node1"]\nstate = "on"\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: compute_environments[0] (name "c"): field "state": '
        "Input should be 'ENABLED' or 'DISABLED' (got \"on\")"
    )


def test_env_without_hosts_or_selector(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "c"\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: compute_environments[0] (name "c"): '
        "needs 'hosts' or 'selector' (or both)"
    )


def test_queue_without_envs(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[queues]]\nname = "q"\ncompute_environments = []\n'
    line = one_problem(tmp_path, text)
    assert line.startswith(
        'inventory.toml: queues[0] (name "q"): field "compute_environments": List should have'
    )


def test_list_item_location(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "c"\nhosts = ["node1", 2]\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: compute_environments[0] (name "c"): field "hosts[1]": '
        "Input should be a valid string (got 2)"
    )


def test_several_problems_all_reported(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """
        [[hosts]]
        name = "a"
        port = 0
        [[hosts]]
        name = "b"
        gpus = "8"
        """,
    )
    assert lines == [
        'inventory.toml: hosts[0] (name "a"): field "port": '
        "Input should be greater than or equal to 1",
        'inventory.toml: hosts[1] (name "b"): field "gpus": '
        'Input should be a valid integer (got "8")',
    ]


# --------------------------------------------------------------------------- cross-reference errors


def test_unknown_host_in_env(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "cpu"\nhosts = ["node1", "nodeX"]\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: compute_environments[0] (name "cpu"): hosts: unknown host "nodeX"'
    )


def test_unknown_host_suggestion(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "cpu"\nhosts = ["node3", "node-1"]\n'
    assert problems(tmp_path, text) == [
        # Another number is not a useful suggestion; a lost character is.
        'inventory.toml: compute_environments[0] (name "cpu"): hosts: unknown host "node3"',
        'inventory.toml: compute_environments[0] (name "cpu"): hosts: unknown host "node-1" '
        '(did you mean "node1"?)',
    ]


def test_many_unknown_hosts_summarised(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "c"\nhosts = ["x[1-99999]"]\n'
    lines = problems(tmp_path, text)
    assert len(lines) == 6
    assert lines[0].endswith('hosts: unknown host "x1"')
    assert lines[-1].endswith("hosts: and 99994 more unknown hosts")


def test_bad_hostlist_expression(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "c"\nhosts = ["node[1-"]\n'
    line = one_problem(tmp_path, text)
    assert line.startswith(
        'inventory.toml: compute_environments[0] (name "c"): hosts: '
        'bad hostlist expression "node[1-": '
    )


def test_selector_matching_nothing(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "c"\nselector = { gpu = "h100" }\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: compute_environments[0] (name "c"): '
        'selector: {gpu = "h100"} matches no host'
    )


def test_empty_hostlist_matching_nothing(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[compute_environments]]\nname = "c"\nhosts = [""]\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: compute_environments[0] (name "c"): matches no host'
    )


def test_unknown_env_in_queue(tmp_path: Path) -> None:
    text = TWO_HOSTS + (
        '[[compute_environments]]\nname = "cpu"\nhosts = ["node1"]\n'
        '[[queues]]\nname = "batch"\ncompute_environments = ["cpu", "gpu"]\n'
    )
    assert one_problem(tmp_path, text) == (
        'inventory.toml: queues[0] (name "batch"): compute_environments: '
        'unknown compute environment "gpu"'
    )


def test_unknown_env_in_queue_suggestion_and_none_declared(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[queues]]\nname = "q"\ncompute_environments = ["al"]\n'
    assert one_problem(tmp_path, text).endswith(
        'unknown compute environment "al" (none are declared, so the only one is "all")'
    )
    text = TWO_HOSTS + (
        '[[compute_environments]]\nname = "cpus"\nhosts = ["node1"]\n'
        '[[queues]]\nname = "q"\ncompute_environments = ["cpu"]\n'
    )
    assert one_problem(tmp_path, text).endswith(
        'unknown compute environment "cpu" (did you mean "cpus"?)'
    )


def test_env_listed_twice_in_queue(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[queues]]\nname = "q"\ncompute_environments = ["all", "all"]\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: queues[0] (name "q"): compute_environments: "all" is listed twice'
    )


def test_unknown_default_queue(tmp_path: Path) -> None:
    text = (
        'default_queue = "bach"\n'
        + TWO_HOSTS
        + ('[[queues]]\nname = "batch"\ncompute_environments = ["all"]\n')
    )
    assert one_problem(tmp_path, text) == (
        'inventory.toml: default_queue: unknown queue "bach" (did you mean "batch"?)'
    )


def test_unknown_default_queue_none_declared(tmp_path: Path) -> None:
    assert one_problem(tmp_path, 'default_queue = "batch"\n' + TWO_HOSTS) == (
        'inventory.toml: default_queue: unknown queue "batch" '
        '(no queues are declared, so the only queue is "default")'
    )


def test_duplicate_host_names(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[hosts]]\nname = "node1"\naddress = "other"\n'
    assert one_problem(tmp_path, text) == (
        'inventory.toml: hosts[2] (name "node1"): name: duplicate host name (also hosts[0])'
    )


def test_duplicate_env_and_queue_names(tmp_path: Path) -> None:
    text = TWO_HOSTS + (
        '[[compute_environments]]\nname = "c"\nhosts = ["node1"]\n'
        '[[compute_environments]]\nname = "c"\nhosts = ["node2"]\n'
        '[[queues]]\nname = "q"\ncompute_environments = ["c"]\n'
        '[[queues]]\nname = "q"\ncompute_environments = ["c"]\n'
    )
    assert problems(tmp_path, text) == [
        'inventory.toml: compute_environments[1] (name "c"): '
        "name: duplicate compute environment name (also compute_environments[0])",
        'inventory.toml: queues[1] (name "q"): name: duplicate queue name (also queues[0])',
    ]


def test_duplicate_address_and_port(tmp_path: Path) -> None:
    text = """
    [defaults]
    port = 2222
    [[hosts]]
    name = "a"
    address = "10.0.0.1"
    [[hosts]]
    name = "b"
    address = "10.0.0.1"
    port = 2222
    """
    assert one_problem(tmp_path, text) == (
        'inventory.toml: hosts[1] (name "b"): address: 10.0.0.1 port 2222 is also used by '
        'hosts[0] (name "a")'
    )


def test_duplicate_address_via_name_default(tmp_path: Path) -> None:
    text = TWO_HOSTS + '[[hosts]]\nname = "n3"\naddress = "node1"\n'
    assert "address: node1 port 22 is also used by hosts[0]" in one_problem(tmp_path, text)


@pytest.mark.parametrize("key", ["user", "identity", "known_hosts", "ssh_config", "work_dir"])
def test_empty_strings_refused(tmp_path: Path, key: str) -> None:
    assert one_problem(tmp_path, f'[[hosts]]\nname = "a"\n{key} = ""\n') == (
        f'inventory.toml: hosts[0] (name "a"): field "{key}": must not be empty'
    )
    assert one_problem(tmp_path, f'[defaults]\n{key} = " "\n[[hosts]]\nname = "a"\n') == (
        f'inventory.toml: defaults: field "{key}": must not be empty'
    )


def test_unknown_current_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise OSError("no user")

    monkeypatch.setattr("getpass.getuser", no_user)
    assert one_problem(tmp_path, '[[hosts]]\nname = "a"\n') == (
        'inventory.toml: hosts[0] (name "a"): field "user": not set, and the current user '
        "is unknown"
    )
    assert load(tmp_path, '[defaults]\nuser = "x"\n[[hosts]]\nname = "a"\n').hosts["a"].user == "x"


# --------------------------------------------------------------------------- hostile input


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes of non-ASCII as surrogate pairs are not TOML)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        items = (f"{_toml_str(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_str(value)
    return str(value)


_text = st.text(st.characters(codec="utf-8"), max_size=8)  # TOML strings cannot hold surrogates
_keys = (
    st.sampled_from(
        [
            "name",
            "address",
            "port",
            "user",
            "identity",
            "known_hosts",
            "ssh_config",
            "work_dir",
            "python",
            "labels",
            "fabric",
            "cpus",
            "memory_mb",
            "gpus",
            "hosts",
            "selector",
            "state",
            "max_vcpus",
            "priority",
            "compute_environments",
            "policy",
            "max_running",
            "default_time_limit_s",
        ]
    )
    | _text
)
_names = st.sampled_from(["n1", "n2", "n3", "node[1-3]", "all", "default", "q", "c", "", "x y"])
_scalars = (
    _names
    | st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.sampled_from(
        ["ENABLED", "DISABLED", "FIFO", "~", "~nobody-x/k", "../k", "a,b", "[", "\x00"]
    )
    | _text
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_entries = st.lists(st.dictionaries(_keys, _values, max_size=6), max_size=4)
_random_documents = st.fixed_dictionaries(
    {},
    optional={
        "hosts": _entries,
        "compute_environments": _entries,
        "queues": _entries,
        "defaults": st.dictionaries(_keys, _values, max_size=4),
        "default_queue": _names,
    },
)

# Mostly well-formed documents, so that resolution (not only validation) is exercised.
_host_names = st.sampled_from(["n1", "n2", "n3", "n4"])
_labels = st.dictionaries(st.sampled_from(["gpu", "kind"]), st.sampled_from(["a", "b"]), max_size=2)
_plausible_host = st.fixed_dictionaries(
    {"name": _host_names},
    optional={
        "address": st.sampled_from(["10.0.0.1", "10.0.0.2", "n1", "N1"]),
        "port": st.integers(0, 70000) | st.sampled_from([22, 2222]),
        "labels": _labels,
        "fabric": st.sampled_from(["ib-a", "ib-b"]),
        "gpus": st.integers(-1, 9),
        "identity": st.sampled_from(["~/k", "k", "/k", "", "~nobody-x/k"]),
    },
)
_env_names = st.sampled_from(["c1", "c2", "all"])
_plausible_env = st.fixed_dictionaries(
    {"name": _env_names},
    optional={
        "hosts": st.lists(
            st.sampled_from(["n[1-2]", "n3", "n[3-9]", "n[", "", "n1,n4"]), max_size=3
        ),
        "selector": _labels,
        "state": st.sampled_from(["ENABLED", "DISABLED"]),
        "health_check": st.sampled_from(["true", "", "nvidia-smi -L", 7]) | st.text(max_size=8),
        "health_check_interval_s": st.integers(-1, 90_000) | st.sampled_from(["5m", 1.5]),
        "health_check_timeout_s": st.integers(-1, 4000),
    },
)
_plausible_queue = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["q1", "q2", "default"]),
        "compute_environments": st.lists(_env_names),
    },
    optional={"fabric": st.sampled_from(["ib-a", "ib-b"]), "priority": st.integers(-1, 1001)},
)
_plausible_documents = st.fixed_dictionaries(
    {"hosts": st.lists(_plausible_host, min_size=1, max_size=5)},
    optional={
        "compute_environments": st.lists(_plausible_env, max_size=3),
        "queues": st.lists(_plausible_queue, max_size=3),
        "default_queue": st.sampled_from(["q1", "q2", "default"]),
    },
)
_documents = _random_documents | _plausible_documents


def _check_hostile(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "hostile.toml"
    path.write_bytes(data)
    try:
        inv = load_inventory(path)
    except InventoryError as exc:
        assert str(exc)
        assert all(line.startswith(str(path)) for line in exc.problems)
        return
    assert inv.default_queue in inv.queues
    for env in inv.compute_environments.values():
        assert env.health_check is None or isinstance(env.health_check, str)
        assert 1 <= env.health_check_interval_s <= 86_400
        assert 1 <= env.health_check_timeout_s <= 3600
    for queue in inv.queues.values():
        for env in queue.compute_environments:
            assert set(inv.compute_environments[env].hosts) <= set(inv.hosts)


_hostile = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)


@_hostile
@given(_documents)
def test_hostile_structured_input(tmp_path: Path, doc: dict[str, Any]) -> None:
    text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in doc.items())
    _check_hostile(tmp_path, text.encode("utf-8", "surrogatepass"))


_fragments = st.sampled_from(
    [
        "[[hosts]]",
        "[hosts]",
        "[defaults]",
        "[[compute_environments]]",
        "[[queues]]",
        'name = "n1"',
        'name = "n2"',
        "port = 99999",
        "port = 22",
        'hosts = ["n[1-2]"]',
        'selector = { a = "b" }',
        'compute_environments = ["all"]',
        'default_queue = "q"',
        "labels = { a = 'b' }",
        "= =",
        "[",
        '"',
        "\x00",
        "x = 1979-05-27T07:32:00Z",
        "x = inf",
        "port = " + "9" * 5000,
        "port = " + "9" * 4000,
    ]
)


@_hostile
@given(st.lists(_fragments | st.text(max_size=20), max_size=12))
def test_hostile_text_input(tmp_path: Path, lines: list[str]) -> None:
    _check_hostile(tmp_path, "\n".join(lines).encode("utf-8", "surrogatepass"))


@_hostile
@given(st.binary(max_size=200))
def test_hostile_binary_input(tmp_path: Path, data: bytes) -> None:
    _check_hostile(tmp_path, data)


def test_health_check_fields_are_resolved_and_checked(tmp_path: Path) -> None:
    base = '[[hosts]]\nname = "n1"\n[[compute_environments]]\nname = "c"\nhosts = ["n1"]\n'
    path = tmp_path / "inv.toml"
    path.write_text(base + 'health_check = "test -d /scratch"\nhealth_check_interval_s = 60\n')
    env = load_inventory(path).compute_environments["c"]
    assert (env.health_check, env.health_check_interval_s, env.health_check_timeout_s) == (
        "test -d /scratch",
        60,
        60,
    )
    path.write_text(base + "health_check_interval_s = 0\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert str(info.value) == (
        f'{path}: compute_environments[0] (name "c"): field "health_check_interval_s": '
        "Input should be greater than or equal to 1"
    )
