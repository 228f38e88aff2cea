"""The Jobs view: squeue as a live table, with filters, sorting, columns and arrays."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static

from hpcbatch.dashboard.colors import palette
from hpcbatch.dashboard.model import Model
from hpcbatch.dashboard.rows import (
    COLUMNS,
    DEFAULT_COLUMNS,
    Column,
    FilterError,
    JobFilter,
    Row,
    fit_columns,
    job_rows,
)
from hpcbatch.dashboard.table import VTable


class OpenJob(Message):
    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id


class CancelJob(Message):
    """Cancel/terminate `target` (`12`, `12_3`, or an array's id); the app asks first."""

    def __init__(self, target: str, what: str) -> None:
        super().__init__()
        self.target = target
        self.what = what


def render_cells(
    cols: list[tuple[Column, int]], values: dict[str, str], styles: dict[str, str]
) -> Text:
    text = Text(no_wrap=True, end="")
    for n, (col, width) in enumerate(cols):
        if n:
            text.append(" ")
        value = values.get(col.key, "")
        if len(value) > width:
            value = value[: max(width - 1, 0)] + "…" if width > 1 else value[:width]
        value = value.rjust(width) if col.right else value.ljust(width)
        text.append(value, styles.get(col.key, ""))
    return text


def header_text(cols: list[tuple[Column, int]], sort: str, reverse: bool) -> Text:
    labels = {
        c.key: c.label + (("▼" if reverse else "▲") if c.key == sort else "") for c, _ in cols
    }
    return render_cells(cols, labels, {})


class JobsView(Vertical):
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("space", "toggle_array", "Expand"),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse", show=False),
        Binding("c", "columns", "Columns"),
        Binding("f", "finished", "Finished"),
        Binding("x", "cancel", "Cancel job"),
    ]
    DEFAULT_CSS = """
    JobsView { height: 1fr; }
    JobsView #jobs-status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    JobsView #jobs-filter { display: none; dock: bottom; }
    JobsView.filtering #jobs-filter { display: block; }
    """

    def __init__(self, model: Model, clock: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model
        self.clock = clock
        self.filter = JobFilter()
        self.sort = "id"
        self.reverse = False
        self.columns: list[str] = list(DEFAULT_COLUMNS)
        self.expanded: set[int] = set()
        self.hide_final = False
        self.rows: list[Row] = []
        self._by_key: dict[str, Row] = {}
        self._id_width = 0

    def compose(self) -> ComposeResult:
        yield Static(id="jobs-status")
        yield VTable(id="jobs-table")
        yield Input(
            placeholder="-t RUNNING,PD -u USER -p QUEUE -n NAME -w HOST -j ID  words",
            id="jobs-filter",
        )

    @property
    def table(self) -> VTable:
        return self.query_one("#jobs-table", VTable)

    def _shown(self) -> bool:
        """Whether the table is on screen: while the app closes, its children go before
        the timers stop, and a tick meanwhile has nothing to draw."""
        return bool(self.query("#jobs-table"))

    # ------------------------------------------------------------------ drawing

    def redraw(self) -> None:
        if not self._shown():
            return
        now = self.clock()
        self.rows = job_rows(
            self.model,
            self.filter,
            now=now,
            sort=self.sort,
            reverse=self.reverse,
            expanded=self.expanded,
            hide_final=self.hide_final,
        )
        self._by_key = {r.key: r for r in self.rows}
        table = self.table
        self._id_width = max((len(r.id_text) for r in self.rows), default=0)
        cols = fit_columns(self.columns, table.content_width, self._id_width)
        pal = palette(self.app)
        rows = self.rows

        def render(i: int, width: int) -> Text:
            row = rows[i]
            styles = {"state": pal.job(row.state)}
            if row.kind == "array":
                styles["id"] = "bold"
            return render_cells(cols, row.values, styles)

        table.set_rows(header_text(cols, self.sort, self.reverse), [r.key for r in rows], render)
        self._status(len(rows))

    def tick(self) -> None:
        """Redraw the times on screen without rebuilding the rows (10,000 jobs stay cheap)."""
        if not self._shown():
            return
        now = self.clock()
        for row in self.rows:
            row.retime(now)
        self.table.refresh()

    def _status(self, shown: int) -> None:
        total = sum(self.model.job_counts().values())
        parts = [f"{shown} rows · {total} jobs"]
        if self.filter.text:
            parts.append(f"filter: {self.filter.text}")
        if self.hide_final:
            parts.append("finished hidden")
        label = next((c.label for c in COLUMNS if c.key == self.sort), self.sort)
        parts.append(f"sort: {label}{' desc' if self.reverse else ''}")
        self.query_one("#jobs-status", Static).update(" · ".join(parts))

    def on_resize(self) -> None:
        self.redraw()

    # ------------------------------------------------------------------ selection

    @property
    def current(self) -> Row | None:
        key = self.table.cursor_key
        return self._by_key.get(key) if key is not None else None

    def on_vtable_selected(self, event: VTable.Selected) -> None:
        row = self._by_key.get(event.key)
        if row is not None:
            event.stop()
            self.post_message(OpenJob(row.job_id))

    def on_vtable_header_clicked(self, event: VTable.HeaderClicked) -> None:
        x = 0
        for col, width in fit_columns(self.columns, self.table.content_width, self._id_width):
            if x <= event.x < x + width + 1:
                self._sort_by(col.key)
                return
            x += width + 1

    # ------------------------------------------------------------------ actions

    def action_filter(self) -> None:
        box = self.query_one("#jobs-filter", Input)
        box.value = self.filter.text
        self.add_class("filtering")
        box.focus()

    def set_filter(self, text: str) -> None:
        """Apply a filter typed as squeue flags; a bad one is reported and not applied."""
        try:
            self.filter = JobFilter.parse(text)
        except FilterError as exc:
            self.app.notify(str(exc), severity="error")
            return
        self.redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.remove_class("filtering")
        self.set_filter(event.value)
        self.table.focus()

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.has_class("filtering"):
            # Leave the filter as it was: Escape never changes anything.
            self.remove_class("filtering")
            self.table.focus()
            event.stop()

    def action_toggle_array(self) -> None:
        row = self.current
        if row is None or row.kind == "job":
            return
        parent = row.job_id if row.kind == "array" else self._parent_of(row)
        if parent is None:
            return
        self.expanded.symmetric_difference_update({parent})
        self.redraw()
        self.table.move_to(str(parent))

    def _parent_of(self, row: Row) -> int | None:
        job = self.model.jobs.get(row.job_id)
        parent = job.get("array_parent") if job else None
        return int(parent) if parent is not None else None

    def _sort_by(self, key: str) -> None:
        if self.sort == key:
            self.reverse = not self.reverse
        else:
            self.sort, self.reverse = key, False
        self.redraw()

    def action_sort(self) -> None:
        keys = [c.key for c in COLUMNS if c.key in self.columns]
        nxt = keys[(keys.index(self.sort) + 1) % len(keys)] if self.sort in keys else keys[0]
        self.sort, self.reverse = nxt, False
        self.redraw()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.redraw()

    def action_finished(self) -> None:
        self.hide_final = not self.hide_final
        self.redraw()

    def action_columns(self) -> None:
        from hpcbatch.dashboard.dialogs import ColumnsScreen

        def chosen(result: list[str] | None) -> None:
            if result:
                self.columns = [c.key for c in COLUMNS if c.key in result]
                self.redraw()

        self.app.push_screen(
            ColumnsScreen([(c.key, c.label) for c in COLUMNS], self.columns), chosen
        )

    def action_cancel(self) -> None:
        row = self.current
        if row is None:
            return
        job = self.model.jobs.get(row.job_id, {})
        if row.kind == "array":
            what = f"array {row.job_id} ({job.get('name', '')}): every child not yet finished"
        else:
            what = f"job {row.key} ({job.get('name', '')}, {row.state})"
        self.post_message(CancelJob(row.key, what))
