"""The Queues view: each job queue's priority, state and its jobs per state.

Counts come from the dashboard's own job model (kept by events), so they move
as jobs do without asking the controller again.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from hpcbatch.dashboard.cluster_view import ShowJobs
from hpcbatch.dashboard.colors import palette
from hpcbatch.dashboard.model import Model
from hpcbatch.dashboard.table import VTable
from hpcbatch.dashboard.words import SHORT, STATE_ORDER


class QueueAction(Message):
    """Enable or disable a queue; the app asks first."""

    def __init__(self, queue: str, state: str) -> None:
        super().__init__()
        self.queue = queue
        self.state = state


class QueuesView(Vertical):
    BINDINGS = [
        Binding("e", "set('ENABLED')", "Enable"),
        Binding("d", "set('DISABLED')", "Disable"),
    ]
    DEFAULT_CSS = """
    QueuesView { height: 1fr; }
    QueuesView #queues-help { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, model: Model, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model

    def compose(self) -> ComposeResult:
        yield Static(
            "Higher priority first · * the default queue · enter: its jobs", id="queues-help"
        )
        yield VTable(id="queues-table")

    @property
    def table(self) -> VTable:
        return self.query_one("#queues-table", VTable)

    def redraw(self) -> None:
        pal = palette(self.app)
        queues = sorted(
            self.model.queues.values(), key=lambda q: (-int(q.get("priority") or 0), q["name"])
        )
        name_w = max([12, *(len(q["name"]) + 1 for q in queues)])
        header = Text(no_wrap=True, end="")
        header.append(f"{'QUEUE':<{name_w}} {'PRIO':>4} {'STATE':<8} {'HOSTS':>5}")
        for state in STATE_ORDER:
            header.append(f" {SHORT[state]:>5}")
        header.append("  COMPUTE ENVIRONMENTS")

        def render(i: int, width: int) -> Text:
            q = queues[i]
            counts = self.model.queue_counts(q["name"])
            text = Text(no_wrap=True, end="")
            name = q["name"] + ("*" if q.get("default") else "")
            text.append(f"{name:<{name_w}} ", "bold")
            text.append(f"{int(q.get('priority') or 0):>4} ")
            state = str(q.get("state", ""))
            text.append(f"{state:<8} ", pal.role("success" if state == "ENABLED" else "error"))
            text.append(f"{len(q.get('hosts') or []):>5}")
            for s in STATE_ORDER:
                n = counts.get(s, 0)
                text.append(f" {n:>5}", pal.job(s) if n else "dim")
            text.append("  " + ",".join(q.get("compute_environments") or []))
            return text

        self.table.set_rows(header, [q["name"] for q in queues], render)

    def on_vtable_selected(self, event: VTable.Selected) -> None:
        event.stop()
        self.post_message(ShowJobs(f"-p {event.key}"))

    def action_set(self, state: str) -> None:
        key = self.table.cursor_key
        if key is not None:
            self.post_message(QueueAction(key, state))
