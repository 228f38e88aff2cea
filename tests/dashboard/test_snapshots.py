"""SVG snapshots of every view, from fixed data (tests/dashboard/sample.py).

The clock is frozen, the model is filled directly (no controller: these
check drawing, the Pilot tests check behaviour), time stamps are UTC, and
the terminal size is fixed, so the SVGs are byte-identical across runs.
Update them with `pytest tests/dashboard/test_snapshots.py --snapshot-update`
and look at the diff before committing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import TabbedContent

from hpcbatch.dashboard import DashApp, create_app
from hpcbatch.dashboard.detail import JobDetailScreen
from hpcbatch.dashboard.dialogs import ConfirmScreen
from hpcbatch.dashboard.jobs_view import JobsView
from tests.dashboard import sample

Snap = Callable[..., bool]


def app(view: str = "jobs", light: bool = False) -> DashApp:
    return create_app(model=sample.model(), clock=sample.clock, initial=view, light=light)


def detail(tab: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        screen = JobDetailScreen(101, None, detail=sample.detail(), log_text=sample.LOG)
        await pilot.app.push_screen(screen)
        await pilot.pause()
        screen.query_one("#detail-tabs", TabbedContent).active = tab
        await pilot.pause()

    return run_before


def test_jobs(snap_compare: Snap) -> None:
    assert snap_compare(app(), terminal_size=(100, 30))


def test_jobs_80x24(snap_compare: Snap) -> None:
    assert snap_compare(app(), terminal_size=(80, 24))


def test_jobs_light(snap_compare: Snap) -> None:
    assert snap_compare(app(light=True), terminal_size=(100, 30))


def test_jobs_array_expanded_and_filtered(snap_compare: Snap) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        view = pilot.app.query_one(JobsView)
        view.set_filter("-u alice -t R,Q,F")
        await pilot.pause()
        assert view.table.move_to("120")
        await pilot.press("space")

    assert snap_compare(app(), terminal_size=(100, 30), run_before=run_before)


def test_jobs_sorted_with_more_columns(snap_compare: Snap) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        view = pilot.app.query_one(JobsView)
        view.columns = ["id", "name", "state", "cpus", "gpus", "memory", "elapsed", "exit"]
        view.sort, view.reverse = "elapsed", True
        view.redraw()

    assert snap_compare(app(), terminal_size=(100, 30), run_before=run_before)


def test_cluster(snap_compare: Snap) -> None:
    assert snap_compare(app("cluster"), terminal_size=(100, 30))


def test_cluster_80x24(snap_compare: Snap) -> None:
    assert snap_compare(app("cluster"), terminal_size=(80, 24))


def test_queues(snap_compare: Snap) -> None:
    assert snap_compare(app("queues"), terminal_size=(100, 30))


def test_detail_overview(snap_compare: Snap) -> None:
    assert snap_compare(app(), terminal_size=(100, 36), run_before=detail("tab-overview"))


def test_detail_script(snap_compare: Snap) -> None:
    assert snap_compare(app(), terminal_size=(100, 30), run_before=detail("tab-script"))


def test_detail_log(snap_compare: Snap) -> None:
    assert snap_compare(app(), terminal_size=(100, 30), run_before=detail("tab-log"))


def test_confirm_cancel(snap_compare: Snap) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.app.push_screen(
            ConfirmScreen(
                "Cancel job 101 (cfd-mesh, RUNNING)?",
                "Jobs not yet running are cancelled; running ones are terminated. Both end FAILED.",
                "Cancel job",
            )
        )

    assert snap_compare(app(), terminal_size=(100, 30), run_before=run_before)


def test_help(snap_compare: Snap) -> None:
    assert snap_compare(app(), terminal_size=(100, 40), press=["question_mark"])


def test_controller_unreachable_banner(snap_compare: Snap) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        pilot.app._on_state(False, "no controller socket at /run/hb.sock; reconnecting every 3s")  # type: ignore[attr-defined]

    assert snap_compare(app(), terminal_size=(80, 24), run_before=run_before)
