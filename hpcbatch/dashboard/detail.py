"""One job in detail: its spec, allocation, state timeline, script, and a live log tail.

The spec and timeline come from the `show` op and are fetched again when the
controller pushes a change of this job. The log is read with the `logs` op
from any node of the job; while following, it is re-read every half second
(the host agent offers no file-change notification), and only while shown.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Log, Static, TabbedContent, TabPane

from hpcbatch.client import ClientError
from hpcbatch.dashboard.api import DashApi
from hpcbatch.dashboard.colors import Palette, palette
from hpcbatch.dashboard.jobs_view import CancelJob
from hpcbatch.dashboard.words import duration, explain, memory, stamp

FOLLOW_INTERVAL_S = 0.5
READ_LIMIT = 256 * 1024
LIVE_S = 2.0  # how often a running job is read again for its live usage


def node_use(a: dict[str, Any]) -> str:
    """One node's use: live while it runs (cores now, memory now), else what was recorded."""
    live, used = a.get("live"), a.get("usage")
    if live and not used:
        parts = []
        if "cpus" in live:
            parts.append(f"{live['cpus']:.2f} cpu {memory(int(live['mem_bytes']) // 2**20)}")
        if "gpu_util" in live:
            parts.append(f"gpu {live['gpu_util']:.0f}%")
        return " ".join(parts) + " now" if parts else "-"
    if used:
        cpu = (used.get("cpu_user_s") or 0) + (used.get("cpu_sys_s") or 0)
        peak = used.get("mem_peak_bytes")
        return f"{duration(cpu)} cpu, peak {memory(int(peak) // 2**20) if peak else '-'}"
    return "-"


PRIVATE = (
    "(another user's job: its script, environment, output and errors are shown"
    " to them and to administrators only)"
)


def overview(job: dict[str, Any], pal: Palette) -> RenderableType:
    req = job.get("request") or job  # another user's job: its public row only
    state = str(job.get("state", ""))
    head = Text()
    head.append(f"{state}", pal.job(state))
    if job.get("exit_code") is not None:
        head.append(f"  exit {job['exit_code']}")
    if job.get("reason"):
        head.append(f"  {job['reason']}", "italic")
    parts: list[RenderableType] = [head]
    said, advice = explain(state, job.get("reason"))
    if said:
        why = Text("Why it waits: ", "bold")
        why.append(said)
        if advice:
            why.append("\n" + advice, "dim")
        parts.append(why)
    spec = Table.grid(padding=(0, 2))
    spec.add_column(style="bold")
    spec.add_column()
    limit = req.get("time_limit_s")
    rows = [
        ("Request", f"{req.get('nodes', 1)} node(s) x {req.get('cpus', 1)} CPUs, "
         f"{memory(req.get('memory_mb'))} memory, {req.get('gpus', 0)} GPUs"),
        ("Time limit", duration(limit) if limit else "none"),
        ("User / queue", f"{job.get('user')} / {job.get('queue')}"),
        ("Submitted", stamp(job.get("submitted"))),
        ("Started", stamp(job.get("started"))),
        ("Ended", stamp(job.get("ended"))),
        ("Attempt", str(job.get("attempt") or "-")),
    ]  # fmt: skip
    if req.get("fabric"):
        rows.append(("Fabric", str(req["fabric"])))
    if req.get("workdir"):
        rows.append(("Workdir", str(req["workdir"])))
    if req.get("definition"):
        rows.append(("Definition", str(req["definition"])))
    for key, value in rows:
        spec.add_row(key, value)
    parts.append(spec)
    attempts = job.get("attempts") or []
    if attempts:
        alloc = Table(title="Nodes", title_justify="left", box=None, padding=(0, 1))
        for col in ("TRY", "NODE", "HOST", "STATE", "GPUS", "EXIT", "USE", "REASON"):
            alloc.add_column(col, style="bold" if col == "HOST" else "")
        for a in attempts:
            alloc.add_row(
                str(a.get("attempt")),
                str(a.get("node")),
                str(a.get("host")),
                str(a.get("state")),
                ",".join(str(g) for g in a.get("gpus") or []) or "-",
                "-" if a.get("exit_code") is None else str(a["exit_code"]),
                node_use(a),
                str(a.get("reason") or ""),
            )
        parts.append(alloc)
    history = Table(title="Timeline", title_justify="left", box=None, padding=(0, 1))
    for col in ("TIME", "STATE", "REASON"):
        history.add_column(col)
    for t in job.get("transitions") or []:
        history.add_row(
            stamp(t.get("ts")),
            Text(str(t.get("new")), pal.job(str(t.get("new")))),
            t.get("reason") or "",
        )
    parts.append(history)
    if job.get("private"):
        parts.append(Text(PRIVATE, "dim"))
    env = req.get("env") or {}
    if env:
        table = Table(title="Environment", title_justify="left", box=None, padding=(0, 1))
        table.add_column("NAME", style="bold")
        table.add_column("VALUE")
        for key in sorted(env):
            table.add_row(key, str(env[key]))
        parts.append(table)
    return Group(*parts)


class JobDetailScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("left", "tab(-1)", "Prev tab", show=False),
        Binding("right", "tab(1)", "Next tab", show=False),
        Binding("o", "stream", "stdout/stderr"),
        Binding("n", "node", "Next node"),
        Binding("f", "follow", "Follow"),
        Binding("x", "cancel", "Cancel job"),
    ]
    DEFAULT_CSS = """
    JobDetailScreen #detail-title { height: 1; background: $panel; text-style: bold; padding: 0 1; }
    JobDetailScreen #log-status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    JobDetailScreen Log { height: 1fr; }
    JobDetailScreen #overview, JobDetailScreen #script { padding: 0 1; }
    """

    def __init__(
        self,
        job_id: int,
        api: DashApi | None,
        *,
        detail: dict[str, Any] | None = None,
        log_text: str = "",
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.api = api
        self.job: dict[str, Any] = detail or {}
        self.stream = "stdout"
        self.node = 0
        self.following = api is not None
        self.log_offset = 0
        self._initial_log = log_text
        self._wake = asyncio.Event()

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with TabbedContent(initial="tab-overview", id="detail-tabs"):
            with TabPane("Overview", id="tab-overview"), VerticalScroll(id="overview-scroll"):
                yield Static(id="overview")
            with TabPane("Script", id="tab-script"), VerticalScroll(id="script-scroll"):
                yield Static(id="script")
            with TabPane("Log", id="tab-log"):
                yield Static(id="log-status")
                yield Log(id="log", auto_scroll=True)
        yield Footer()

    TABS = ("tab-overview", "tab-script", "tab-log")
    SCROLLERS = {
        "tab-overview": "#overview-scroll",
        "tab-script": "#script-scroll",
        "tab-log": "#log",
    }

    def action_tab(self, step: int) -> None:
        tabs = self.query_one("#detail-tabs", TabbedContent)
        i = self.TABS.index(tabs.active) if tabs.active in self.TABS else 0
        tabs.active = self.TABS[(i + step) % len(self.TABS)]

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # Arrows and page keys scroll what the tab shows; left/right change tabs.
        pane = event.pane.id or ""
        if pane in self.SCROLLERS:
            self.query_one(self.SCROLLERS[pane]).focus()

    def on_mount(self) -> None:
        self.query_one("#overview-scroll").focus()
        if self._initial_log:
            self.query_one(Log).write(self._initial_log)
        self._show()
        if self.api is not None:
            self.reload()
            self.tail()
            self.set_interval(LIVE_S, self._live)

    def _live(self) -> None:
        """While the job runs, read it again for its nodes' live usage."""
        if self.job.get("state") == "RUNNING":
            self.reload()

    # ------------------------------------------------------------------ spec and timeline

    def _show(self) -> None:
        job = self.job
        pal = palette(self.app)
        title = f"Job {job.get('display_id') or self.job_id}"
        if job:
            title += f"  {job.get('name', '')}  ({job.get('state', '')})"
        self.query_one("#detail-title", Static).update(title)
        self.query_one("#overview", Static).update(overview(job, pal) if job else "loading…")
        req = job.get("request") or {}
        script = str(req.get("script") or "")
        args = req.get("args") or []
        theme = "monokai" if pal.dark else "default"
        body: RenderableType = (
            Syntax(script, "bash", theme=theme, line_numbers=True)
            if script
            else Text(PRIVATE if job.get("private") else "(no script)")
        )
        if args:
            body = Group(body, Text("arguments: " + " ".join(map(str, args)), "dim"))
        self.query_one("#script", Static).update(body)
        self._log_status()

    @work(exclusive=True, group="detail-reload")
    async def reload(self) -> None:
        """Fetch the job again (on open, and when the controller says it changed)."""
        if self.api is None:
            return
        try:
            self.job = await self.api.call("show", job_id=self.job_id)
        except ClientError as exc:
            self.notify(f"job {self.job_id}: {exc.message}", severity="error")
            return
        with contextlib.suppress(NoMatches):  # closed while the answer was on its way
            self._show()
        self._wake.set()

    def job_changed(self) -> None:
        self.reload()

    # ------------------------------------------------------------------ the log

    def _job_nodes(self) -> list[int]:
        attempt = self.job.get("attempt")
        nodes = {
            int(a["node"]) for a in self.job.get("attempts") or [] if a.get("attempt") == attempt
        }
        return sorted(nodes) or [0]

    def _log_status(self) -> None:
        nodes = self._job_nodes()
        host = next(
            (a.get("host") for a in self.job.get("attempts") or []
             if a.get("attempt") == self.job.get("attempt") and a.get("node") == self.node),
            None,
        )  # fmt: skip
        text = (
            f"{self.stream} · node {self.node} of {len(nodes)}"
            + (f" on {host}" if host else "")
            + f" · follow {'on' if self.following else 'off'} · {self.log_offset} bytes"
        )
        self.query_one("#log-status", Static).update(text)

    @work(exclusive=True, group="detail-log")
    async def tail(self) -> None:
        """Read the chosen stream from the chosen node; keep reading while following."""
        with contextlib.suppress(NoMatches):  # closed while a read was on its way
            await self._tail()

    async def _tail(self) -> None:
        if self.api is None:
            return
        log = self.query_one(Log)
        while True:
            try:
                chunk = await self.api.call(
                    "logs", job_id=self.job_id, stream=self.stream, node=self.node,
                    offset=self.log_offset, limit=READ_LIMIT,
                )  # fmt: skip
            except ClientError as exc:
                self.query_one("#log-status", Static).update(f"log: {exc.message}")
                if exc.kind == "forbidden":  # another user's job: asking again will not help
                    return
                chunk = None
            if chunk is not None:
                if chunk.get("data"):
                    log.write(chunk["data"])
                    self.log_offset = int(chunk.get("offset") or self.log_offset)
                    self._log_status()
                    continue  # more may be waiting: read again at once
                self._log_status()
                if chunk.get("done") and chunk.get("state") in ("SUCCEEDED", "FAILED"):
                    return
            if not self.following:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FOLLOW_INTERVAL_S)

    def _restart_log(self) -> None:
        self.log_offset = 0
        self.query_one(Log).clear()
        self._log_status()
        self.tail()

    def action_stream(self) -> None:
        self.stream = "stderr" if self.stream == "stdout" else "stdout"
        self._restart_log()

    def action_node(self) -> None:
        nodes = self._job_nodes()
        self.node = (
            nodes[(nodes.index(self.node) + 1) % len(nodes)] if self.node in nodes else nodes[0]
        )
        self._restart_log()

    def action_follow(self) -> None:
        self.following = not self.following
        self._log_status()
        if self.following:
            self.tail()

    def action_cancel(self) -> None:
        job = self.job
        key = str(job.get("display_id") or self.job_id)
        what = f"job {key} ({job.get('name', '')}, {job.get('state', '')})"
        if job.get("array_size") is not None:
            what = f"array {self.job_id} ({job.get('name', '')}): every child not yet finished"
        self.post_message(CancelJob(key, what))
