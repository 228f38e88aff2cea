"""The dashboard application: three views, a job detail screen, confirmed actions.

Built by `create_app()`: with a socket path it connects to the controller (the
same API as the CLI, never the database) and follows its pushed events; with
only a model it shows that model as it is (the snapshot tests' fixed data).
Redraws are coalesced: a burst of events redraws the visible view at most
every REDRAW_S seconds, and only the visible view is drawn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import Footer, Static, TabbedContent, TabPane

from hpcbatch.client import ClientError
from hpcbatch.dashboard.api import DashApi
from hpcbatch.dashboard.cluster_view import ClusterView, HostAction, ShowJobs
from hpcbatch.dashboard.detail import JobDetailScreen
from hpcbatch.dashboard.dialogs import ConfirmScreen, HelpScreen
from hpcbatch.dashboard.feed import Feed
from hpcbatch.dashboard.jobs_view import CancelJob, JobsView, OpenJob
from hpcbatch.dashboard.model import Model
from hpcbatch.dashboard.queues_view import QueueAction, QueuesView
from hpcbatch.dashboard.table import VTable

REDRAW_S = 0.2
TICK_S = 1.0  # elapsed times move on even without events
View = ClusterView | JobsView | QueuesView


class DashApp(App[None]):
    TITLE = "hpcbatch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("1", "view('cluster')", "Cluster", show=False),
        Binding("2", "view('jobs')", "Jobs", show=False),
        Binding("3", "view('queues')", "Queues", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("t", "toggle_theme", "Theme", show=False),
        Binding("ctrl+r", "reload", "Reload", show=False),
        Binding("q", "quit", "Quit"),
    ]
    CSS = """
    #banner { height: auto; background: $error; color: $foreground; padding: 0 1;
              display: none; text-style: bold; }
    #banner.down { display: block; }
    #topline { height: 1; background: $primary; color: $foreground; padding: 0 1; }
    TabbedContent { height: 1fr; }
    TabbedContent > ContentSwitcher { height: 1fr; }
    TabPane { padding: 0; height: 1fr; }
    """

    def __init__(
        self,
        model: Model,
        api: DashApi | None,
        *,
        clock: Callable[[], float] = time.time,
        light: bool = False,
        initial: str = "jobs",
        where: str = "",
    ) -> None:
        super().__init__()
        self.model = model
        self.api = api
        self.clock = clock
        self.initial = initial
        self.where = where
        self.theme = "textual-light" if light else "textual-dark"
        self.connected = api is None
        self.feed: Feed | None = None
        self._redraw_timer: Timer | None = None
        self._redraw_cost = 0.0
        self._drawn: dict[str, int] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="banner")
        yield Static(id="topline")
        with TabbedContent(initial=self.initial, id="views"):
            with TabPane("Cluster [1]", id="cluster"):
                yield ClusterView(self.model, id="cluster-view")
            with TabPane("Jobs [2]", id="jobs"):
                yield JobsView(self.model, self.clock, id="jobs-view")
            with TabPane("Queues [3]", id="queues"):
                yield QueuesView(self.model, id="queues-view")
        yield Footer()

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, lambda _theme: self.redraw(force=True))
        self._topline()
        self.call_after_refresh(self._focus_view)
        self.call_after_refresh(self.redraw)
        self.set_interval(TICK_S, self._tick)
        if self.api is not None:
            self.feed = Feed(self.api, self.model, self._on_state, self._on_change)
            self.follow()

    @work(exclusive=True, group="feed")
    async def follow(self) -> None:
        assert self.feed is not None
        await self.feed.run()

    async def on_unmount(self) -> None:
        if self.api is not None:
            await self.api.close()

    # ------------------------------------------------------------------ connection

    def _on_state(self, connected: bool, message: str) -> None:
        self.connected = connected
        if not self.is_running or not self.screen_stack:
            return
        banner = self.query_one("#banner", Static)
        banner.set_class(not connected, "down")
        if not connected:
            banner.update(f"Controller unreachable: {message}")
        self._topline()

    def _on_change(self, job_ids: set[int]) -> None:
        if not self.is_running or not self.screen_stack:
            return  # shutting down: nothing to draw on
        self.request_redraw()
        screen = self.screen
        if isinstance(screen, JobDetailScreen) and job_ids:
            job = self.model.jobs.get(screen.job_id, {})
            if screen.job_id in job_ids or job.get("array_parent") in job_ids:
                screen.job_changed()

    def _topline(self) -> None:
        m = self.model
        who = f"{m.user}{' (admin)' if m.admin else ''}" if m.user else ""
        link = (
            "live" if self.api is not None and self.connected else ("offline" if self.api else "")
        )
        parts = [p for p in ("hpcbatch", self.where, who, link) if p]
        self.query_one("#topline", Static).update(" · ".join(parts))

    # ------------------------------------------------------------------ drawing

    def request_redraw(self) -> None:
        if self._redraw_timer is None:
            # A redraw that costs more (10,000 jobs) waits longer: at most ~20% of a core.
            delay = max(REDRAW_S, 4 * self._redraw_cost)
            self._redraw_timer = self.set_timer(delay, self._timed_redraw)

    def _timed_redraw(self) -> None:
        self._redraw_timer = None
        started = time.perf_counter()
        self.redraw()
        self._redraw_cost = time.perf_counter() - started

    def _views(self) -> dict[str, View]:
        return {
            "cluster": self.query_one(ClusterView),
            "jobs": self.query_one(JobsView),
            "queues": self.query_one(QueuesView),
        }

    def _active_tab(self) -> str | None:
        """The visible view's tab, or None while no view is on the screen: another screen
        on top (a node's log), or the app closing. Timers and the feed fire meanwhile."""
        tabs = list(self.query(TabbedContent))
        return (tabs[0].active or self.initial) if tabs else None

    def redraw(self, force: bool = False) -> None:
        """Draw the visible view if the model changed since it was last drawn."""
        active = self._active_tab()
        if active is None:
            return
        view = self._views().get(active)
        if view is None or (not force and self._drawn.get(active) == self.model.version):
            return
        self._drawn[active] = self.model.version
        view.redraw()
        self._topline()

    def _tick(self) -> None:
        active = self._active_tab()
        if active == "jobs":
            self.query_one(JobsView).tick()
        elif self.feed is not None and active == "cluster":
            self.feed.live_tick()  # actual load and memory beside the allocation

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.tabbed_content.id == "views":
            self.redraw()
            self.call_after_refresh(self._focus_view)

    def _focus_view(self) -> None:
        active = self._active_tab()
        view = self._views().get(active) if active is not None else None
        if view is not None:
            view.query_one(VTable).focus()

    # ------------------------------------------------------------------ navigation

    def action_view(self, name: str) -> None:
        if not isinstance(self.screen, JobDetailScreen):
            self.query_one(TabbedContent).active = name
            self.redraw(force=True)
            self.call_after_refresh(self._focus_view)  # once the pane is shown

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = "textual-dark" if self.theme == "textual-light" else "textual-light"

    async def action_reload(self) -> None:
        if self.feed is not None and self.connected:
            try:
                await self.feed.load()
            except ClientError as exc:
                self.notify(exc.message, severity="error")
            self.redraw(force=True)

    def on_open_job(self, event: OpenJob) -> None:
        self.push_screen(
            JobDetailScreen(event.job_id, self.api, detail=self.model.jobs.get(event.job_id))
        )

    def on_show_jobs(self, event: ShowJobs) -> None:
        self.query_one(TabbedContent).active = "jobs"
        jobs = self.query_one(JobsView)
        jobs.set_filter(event.filter_text)
        self._drawn["jobs"] = self.model.version
        self.call_after_refresh(self._focus_view)

    # ------------------------------------------------------------------ actions (confirmed)

    def on_cancel_job(self, event: CancelJob) -> None:
        target = int(event.target) if event.target.isdigit() else event.target
        reason = f"cancelled from the dashboard by {self.model.user or 'an operator'}"
        self._confirm(
            f"Cancel {event.what}?",
            "Jobs not yet running are cancelled; running ones are terminated. Both end FAILED.",
            "Cancel job",
            "cancel",
            {"job_ids": [target], "reason": reason},
        )

    def on_host_action(self, event: HostAction) -> None:
        if event.action == "drain":
            detail = "Running jobs finish; nothing new starts there until it is resumed."
            args: dict[str, Any] = {
                "host": event.host,
                "reason": f"drained from the dashboard by {self.model.user}",
            }
        else:
            detail = "The host takes new work again."
            args = {"host": event.host}
        self._confirm(
            f"{event.action.title()} host {event.host}?",
            detail,
            event.action.title(),
            event.action,
            args,
        )

    def on_queue_action(self, event: QueueAction) -> None:
        verb = "Enable" if event.state == "ENABLED" else "Disable"
        detail = (
            "Its waiting jobs become eligible to start."
            if event.state == "ENABLED"
            else "Nothing new starts from it; running jobs go on."
        )
        reason = f"set from the dashboard by {self.model.user}"
        args = {"queue": event.queue, "state": event.state, "reason": reason}
        self._confirm(f"{verb} queue {event.queue}?", detail, verb, "queue_update", args)

    def _confirm(self, question: str, detail: str, yes: str, op: str, args: dict[str, Any]) -> None:
        if self.api is None:
            self.notify("not connected to a controller", severity="warning")
            return

        def answered(ok: bool | None) -> None:
            if ok:
                self.perform(op, args)

        self.push_screen(ConfirmScreen(question, detail, yes), answered)

    @work(group="actions")
    async def perform(self, op: str, args: dict[str, Any]) -> None:
        assert self.api is not None
        try:
            result = await self.api.call(op, **args)
        except ClientError as exc:
            self.notify(f"{op}: {exc.message}", severity="error", timeout=8)
            return
        if op == "cancel":
            lines = [
                f"job {r.get('display_id') or r.get('job_id')}: {r.get('result')}" for r in result
            ]
            self.notify(
                "\n".join(lines[:5]) + (f"\n… {len(lines) - 5} more" if len(lines) > 5 else "")
            )
        elif op in ("drain", "resume"):
            self.model.put_hosts([result])
            self.notify(f"{args['host']}: {'drained' if op == 'drain' else 'resumed'}")
        else:
            self.model.put_queues([result])
            self.notify(f"queue {result['name']}: {result['state']}")
        self.request_redraw()


def create_app(
    socket: Path | None = None,
    *,
    model: Model | None = None,
    clock: Callable[[], float] = time.time,
    light: bool = False,
    initial: str = "jobs",
) -> DashApp:
    """The dashboard for the controller at `socket`, or for a fixed `model` when none."""
    api = DashApi(socket) if socket is not None else None
    where = "" if socket is None else str(socket)
    return DashApp(model or Model(), api, clock=clock, light=light, initial=initial, where=where)
