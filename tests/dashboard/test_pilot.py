"""The dashboard driven by Pilot against a real controller on the sshd sandbox.

Each test reads what the views hold (the rows they draw, the log widget's
lines, the banner) after pressing keys, and checks the controller through its
own API: an action the screen claims must have happened there.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Log, Static, TabbedContent

from hpcbatch.controller.app import Controller
from hpcbatch.dashboard import DashApp, create_app
from hpcbatch.dashboard.cluster_view import ClusterView
from hpcbatch.dashboard.detail import JobDetailScreen
from hpcbatch.dashboard.dialogs import ConfirmScreen
from hpcbatch.dashboard.jobs_view import JobsView
from hpcbatch.dashboard.queues_view import QueuesView
from hpcbatch.dashboard.table import VTable
from tests.integration.conftest import Api, until

SIZE = (120, 36)


def row(app: DashApp, key: str) -> dict[str, str] | None:
    """The cells the jobs view draws for `key`, or None when it shows no such row."""
    view = app.query_one(JobsView)
    found = next((r for r in view.rows if r.key == key), None)
    return None if found is None else found.values


def drawn(table: VTable, key: str) -> str:
    """The text the table draws for the row with `key`."""
    i = table.keys.index(key)
    return table._row_render(i, table.content_width).plain


def text_of(widget: Static) -> str:
    """What a Static shows, as plain text."""
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


async def connected(app: DashApp) -> None:
    await until(lambda: app.connected and app.model.hosts, what="the dashboard connected")


async def open_row(pilot: Pilot[Any], app: DashApp, key: str) -> None:
    table = app.query_one(JobsView).table
    await until(lambda: key in table.keys, what=f"row {key}")
    assert table.move_to(key)
    await pilot.press("enter")


async def test_jobs_move_through_states_and_arrays_expand(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    app = create_app(c.settings.socket)
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        job = await api.submit(name="dash-states", script="#!/bin/sh\nsleep 1.5\n")
        await until(lambda: (row(app, str(job)) or {}).get("state") == "RUNNING", what="RUNNING")
        cells = row(app, str(job))
        assert cells is not None and cells["name"] == "dash-states"
        assert cells["reason"].startswith("node")  # NODELIST while running
        await until(lambda: (row(app, str(job)) or {}).get("state") == "SUCCEEDED", what="done")
        assert "SUCCEEDED" in drawn(app.query_one(JobsView).table, str(job))

        array = await api.submit(name="dash-array", array="0-3", script="#!/bin/sh\nsleep 1\n")
        await until(lambda: row(app, str(array)) is not None, what="the array's row")
        await until(lambda: "OK 4" in (row(app, str(array)) or {}).get("reason", ""), timeout=60)
        assert row(app, f"{array}_0") is None  # collapsed
        view = app.query_one(JobsView)
        assert view.table.move_to(str(array))
        await pilot.press("space")
        await until(lambda: row(app, f"{array}_3") is not None, what="children shown")
        assert [r.key for r in view.rows if r.kind == "child"][-4:] == [
            f"{array}_{i}" for i in range(4)
        ]

        # squeue-style filter, typed after `/`
        await pilot.press("slash")
        await pilot.press(*"-t F")
        await pilot.press("enter")
        assert row(app, str(job)) is None
        await pilot.press("slash", "ctrl+u", "enter")  # an empty filter shows everything again
        assert row(app, str(job)) is not None


async def test_detail_shows_spec_and_follows_the_log(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    app = create_app(c.settings.socket)
    script = "#!/bin/sh\nfor i in 1 2 3 4 5 6; do echo line$i; echo err$i >&2; sleep 0.5; done\n"
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        job = await api.submit(name="dash-log", script=script, env={"DASH_VAR": "42"})
        await open_row(pilot, app, str(job))
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        await until(lambda: screen.job.get("request"), what="the job's detail")
        overview = text_of(screen.query_one("#overview", Static))
        assert "DASH_VAR" in overview and "42" in overview
        assert "echo line$i" in text_of(screen.query_one("#script", Static))
        screen.query_one("#detail-tabs", TabbedContent).active = "tab-log"
        log = screen.query_one(Log)
        # lines arrive while the job runs: the tail follows them
        await until(lambda: "line1" in "".join(log.lines), what="the first lines")
        assert app.model.jobs[job]["state"] == "RUNNING"
        await until(lambda: "line6" in "".join(log.lines), what="the whole log", timeout=30)
        await pilot.press("o")  # stderr
        await until(lambda: "err6" in "".join(log.lines), what="stderr")
        assert "line1" not in "".join(log.lines)
        await until(lambda: screen.job.get("state") == "SUCCEEDED", what="pushed final state")
        await pilot.press("escape")
        assert not isinstance(app.screen, JobDetailScreen)


async def test_cancel_asks_first_and_escape_does_nothing(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    app = create_app(c.settings.socket)
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        job = await api.submit(name="dash-cancel", script="#!/bin/sh\nsleep 60\n")
        await until(lambda: (row(app, str(job)) or {}).get("state") == "RUNNING", what="RUNNING")
        app.query_one(JobsView).table.move_to(str(job))
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("x", "enter")  # Enter presses the focused button: "No"
        await pilot.pause(0.3)
        assert (await api("show", job_id=job))["state"] == "RUNNING"
        await pilot.press("x", "y")
        await until(lambda: (row(app, str(job)) or {}).get("state") == "FAILED", what="cancelled")
        shown = await api("show", job_id=job)
        assert shown["state"] == "FAILED"
        assert "dashboard" in str(shown["transitions"][-1]["reason"])


async def test_drain_and_resume_a_host_and_disable_a_queue(
    cluster: tuple[Controller, Api],
) -> None:
    c, api = cluster
    app = create_app(c.settings.socket)
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        await pilot.press("1")
        view = app.query_one(ClusterView)
        await until(lambda: "node2" in view.table.keys, what="hosts drawn")
        assert "idle" in drawn(view.table, "node2")
        view.table.move_to("node2")
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(lambda: "drained" in drawn(view.table, "node2"), what="node2 drained")
        hosts: list[dict[str, Any]] = await api("hosts")
        assert next(h for h in hosts if h["name"] == "node2")["admin"] == "DRAIN"
        await pilot.press("u", "y")
        await until(lambda: "idle" in drawn(view.table, "node2"), what="node2 resumed")

        await pilot.press("3")
        queues = app.query_one(QueuesView)
        await until(lambda: "batch" in queues.table.keys, what="queues drawn")
        queues.table.move_to("batch")
        await pilot.press("d", "y")
        await until(lambda: "DISABLED" in drawn(queues.table, "batch"), what="queue disabled")
        assert next(q for q in await api("queues") if q["name"] == "batch")["state"] == "DISABLED"
        # A job in the disabled queue waits, and its detail says why in plain words.
        job = await api.submit(name="dash-waits", queue="batch", script="#!/bin/sh\ntrue\n")
        await pilot.press("2")
        await until(lambda: "QueueDisabled" in (row(app, str(job)) or {}).get("reason", ""))
        await pilot.pause()
        await open_row(pilot, app, str(job))
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        await until(lambda: screen.job.get("request"), what="the job's detail")
        assert "Why it waits: Its queue is disabled" in text_of(
            screen.query_one("#overview", Static)
        )
        await pilot.press("escape", "3")
        await pilot.pause()
        queues.table.move_to("batch")
        await pilot.press("e", "y")
        await until(lambda: "ENABLED" in drawn(queues.table, "batch"), what="queue enabled")
        assert (await api.wait(job))[0]["state"] == "SUCCEEDED"  # enabled: it runs


async def test_controller_going_away_shows_a_banner_and_reconnects(
    controller_factory: Callable[..., Any],
) -> None:
    c, _api = await controller_factory()
    home = c.settings.home
    app = create_app(c.settings.socket)
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        banner = app.query_one("#banner", Static)
        assert not banner.has_class("down")
        await c.stop()
        await until(lambda: banner.has_class("down"), what="the banner")
        assert "unreachable" in text_of(banner)
        _c2, api2 = await controller_factory(home=home)
        await until(lambda: app.connected, what="reconnected", timeout=30)
        assert not banner.has_class("down")
        job = await api2.submit(name="after-restart", script="#!/bin/sh\ntrue\n")
        await until(lambda: row(app, str(job)) is not None, what="events after reconnecting")
        await pilot.pause()


async def test_log_of_each_node_of_a_multi_node_job(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    app = create_app(c.settings.socket)
    script = "#!/bin/sh\necho hello from node $HPCBATCH_NODE_INDEX on $(hostname)\nsleep 1\n"
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        job = await api.submit(name="dash-gang", nodes=2, launch_mode="all", script=script)
        await api.wait(job)
        await open_row(pilot, app, str(job))
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        screen.query_one("#detail-tabs", TabbedContent).active = "tab-log"
        log = screen.query_one(Log)
        await until(lambda: "hello from node 0" in "".join(log.lines), what="node 0's log")
        status = screen.query_one("#log-status", Static)
        assert "node 0 of 2" in text_of(status)
        await pilot.press("n")
        await until(lambda: "hello from node 1" in "".join(log.lines), what="node 1's log")
        assert "hello from node 0" not in "".join(log.lines)
        assert "node 1 of 2" in text_of(status)


async def test_live_usage_in_the_host_view_and_the_job_detail(
    cluster: tuple[Controller, Api],
) -> None:
    """The agents' cgroup samples reach the screen: the host view's actual load and
    memory beside the allocation, and the running job's nodes in its detail."""
    c, api = cluster
    hosts: list[dict[str, Any]] = await api("hosts")
    if not hosts[0]["facts"]["limits"]["enforced"]:
        pytest.skip(f"cgroups cannot be delegated here: {hosts[0]['facts']['limits']['why']}")
    app = create_app(c.settings.socket)
    spin = "#!/bin/sh\nexec timeout 60 sh -c 'while :; do :; done'\n"
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        job = await api.submit(name="dash-live", cpus=1, script=spin)
        (where,) = (await until_running(api, job))["hosts"]
        await pilot.press("1")
        view = app.query_one(ClusterView)
        await until(lambda: where in view.table.keys, what="hosts drawn")
        await until(lambda: "using " in drawn(view.table, where), what="live load", timeout=20)
        await pilot.press("2")
        await open_row(pilot, app, str(job))
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        await until(
            lambda: " now" in text_of(screen.query_one("#overview", Static)),
            what="the node's live usage in the detail",
            timeout=20,
        )
        await api("cancel", job_ids=[job])


async def until_running(api: Api, job: int) -> dict[str, Any]:
    for _ in range(300):
        (j,) = await api("jobs", ids=[job], all=True)
        if j["state"] == "RUNNING":
            return dict(j)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job} did not start")
