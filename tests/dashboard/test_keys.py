"""Keys that need no controller, on the fixed sample: columns, sorting, filters, help, theme."""

from __future__ import annotations

from textual.widgets import TabbedContent

from hpcbatch.dashboard import DashApp, create_app
from hpcbatch.dashboard.dialogs import ColumnsScreen, HelpScreen
from hpcbatch.dashboard.jobs_view import JobsView
from tests.dashboard import sample


def app() -> DashApp:
    return create_app(model=sample.model(), clock=sample.clock)


async def test_choose_columns_sort_and_reverse() -> None:
    a = app()
    async with a.run_test(size=(100, 30)) as pilot:
        view = a.query_one(JobsView)
        await pilot.pause()
        assert a.focused is view.table
        await pilot.press("c")
        assert isinstance(a.screen, ColumnsScreen)
        await pilot.press("space")  # the first entry, JOBID, off
        await pilot.press("down", "down", "down", "down", "down", "down", "space")  # CPUS on
        await pilot.press("enter")
        assert not isinstance(a.screen, ColumnsScreen)
        assert "id" not in view.columns and "cpus" in view.columns
        await pilot.press("c", "space", "escape")  # Escape keeps the columns as they were
        assert "id" not in view.columns
        await pilot.press("s")
        assert view.sort == "name"
        await pilot.press("r")
        assert view.reverse and view.rows[0].values["name"] == "wide-mpi"


async def test_bad_filter_is_reported_and_escape_keeps_the_old_one() -> None:
    a = app()
    async with a.run_test(size=(100, 30)) as pilot:
        view = a.query_one(JobsView)
        await pilot.pause()
        await pilot.press("slash", *"-u bob", "enter")
        assert [r.key for r in view.rows] == ["103", "108"]
        await pilot.press("slash", *" -t NOPE", "enter")
        assert view.filter.text == "-u bob"  # not applied
        assert any("NOPE" in str(n.message) for n in a._notifications)
        await pilot.press("slash", "ctrl+u", "escape")
        assert view.filter.text == "-u bob"
        assert not view.has_class("filtering")


async def test_help_theme_and_views() -> None:
    a = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        assert isinstance(a.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(a.screen, HelpScreen)
        await pilot.press("t")
        assert a.theme == "textual-light"
        await pilot.press("1")
        assert a.query_one("#views").active == "cluster"  # type: ignore[attr-defined]
        await pilot.press("enter")  # node1's jobs
        view = a.query_one(JobsView)
        assert view.filter.text == "-w node1"
        assert [r.key for r in view.rows] == ["101"]


async def test_timers_firing_while_the_views_are_gone_do_not_crash() -> None:
    """The refresh timer, the feed and a focus after refresh may fire while the app is
    closing, its views already removed (seen in CI: NoMatches from the timer in the
    middle of a Pilot's exit): they find no view and do nothing."""
    a = app()
    async with a.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await a.query_one(TabbedContent).remove()
        a._tick()
        a.redraw(force=True)
        a._focus_view()
