"""A virtual table: draws only the rows on screen, so 10,000 jobs cost nothing.

Textual's DataTable builds and measures every cell when rows are added (seconds
for 10,000 rows); here a view hands over the row keys and a function that
renders row `i`, and the widget asks for the few rows it shows. The header
stays on the first line; the cursor follows its row's key across refreshes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Render = Callable[[int, int], Text]  # (row index, width) -> the row's text


def _no_render(i: int, width: int) -> Text:
    return Text()


class VTable(ScrollView, can_focus=True):
    """Rows with a fixed header line; keys of `None` are group headings (not selectable)."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "edge(0)", "First", show=False),
        Binding("end,G", "edge(1)", "Last", show=False),
        Binding("enter", "select", "Open", show=False),
    ]
    COMPONENT_CLASSES = {"vtable--header", "vtable--cursor", "vtable--group"}
    DEFAULT_CSS = """
    VTable { height: 1fr; background: $surface; }
    VTable > .vtable--header { text-style: bold; background: $panel; color: $foreground; }
    VTable > .vtable--cursor { background: $foreground 8%; }
    VTable:focus > .vtable--cursor { background: $foreground 20%; }
    VTable > .vtable--group { text-style: bold; color: $accent; }
    """

    class Highlighted(Message):
        def __init__(self, table: VTable, key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

    class Selected(Message):
        def __init__(self, table: VTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

    class HeaderClicked(Message):
        def __init__(self, table: VTable, x: int) -> None:
            super().__init__()
            self.table = table
            self.x = x

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.keys: list[str | None] = []
        self.cursor = 0
        self._header = Text()
        self._row_render: Render = _no_render

    # ------------------------------------------------------------------ data

    @property
    def cursor_key(self) -> str | None:
        return self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None

    @property
    def content_width(self) -> int:
        return max(self.scrollable_content_region.width, 1)

    def set_rows(self, header: Text, keys: Sequence[str | None], render: Render) -> None:
        """New rows; the cursor stays on the same key when it is still there."""
        old = self.cursor_key
        self._header = header
        self.keys = list(keys)
        self._row_render = render
        if old is not None:
            try:
                self.cursor = self.keys.index(old)
            except ValueError:
                self.cursor = min(self.cursor, max(len(self.keys) - 1, 0))
        self.cursor = self._selectable(min(self.cursor, max(len(self.keys) - 1, 0)), 1)
        self.virtual_size = Size(self.content_width, len(self.keys) + 1)
        self._follow_cursor()
        self.refresh()
        if self.cursor_key != old:
            self.post_message(self.Highlighted(self, self.cursor_key))

    def move_to(self, key: str) -> bool:
        if key not in self.keys:
            return False
        self._set_cursor(self.keys.index(key))
        return True

    # ------------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        width = self.content_width
        if y == 0:
            style = self.get_component_rich_style("vtable--header")
            return self._strip(self._header, width, style)
        i = self.scroll_offset.y + y - 1
        base = self.rich_style
        if i < 0 or i >= len(self.keys):
            return Strip.blank(width, base)
        text = self._row_render(i, width)
        if self.keys[i] is None:
            return self._strip(text, width, self.get_component_rich_style("vtable--group"))
        if i == self.cursor:
            return self._strip(text, width, base + self.get_component_rich_style("vtable--cursor"))
        return self._strip(text, width, base)

    def _strip(self, text: Text, width: int, style: Style) -> Strip:
        segments = [
            Segment(s.text, style + s.style if s.style else style) for s in _segments(self, text)
        ]
        return Strip(segments).crop_extend(0, width, style)

    # ------------------------------------------------------------------ cursor

    def _selectable(self, i: int, step: int) -> int:
        """The nearest row from `i` (going `step`) that is not a group heading."""
        n = len(self.keys)
        j = i
        while 0 <= j < n and self.keys[j] is None:
            j += step
        if 0 <= j < n:
            return j
        j = i
        while 0 <= j < n and self.keys[j] is None:
            j -= step
        return j if 0 <= j < n else max(min(i, n - 1), 0)

    def _set_cursor(self, i: int, step: int = 1) -> None:
        if not self.keys:
            return
        old = self.cursor
        self.cursor = self._selectable(max(0, min(i, len(self.keys) - 1)), step)
        self._follow_cursor()
        self.refresh()
        if old != self.cursor:
            self.post_message(self.Highlighted(self, self.cursor_key))

    def _follow_cursor(self) -> None:
        rows = max(self.size.height - 1, 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, immediate=True)

    def action_move(self, step: int) -> None:
        self._set_cursor(self.cursor + step, 1 if step > 0 else -1)

    def action_page(self, direction: int) -> None:
        rows = max(self.size.height - 2, 1)
        self._set_cursor(self.cursor + direction * rows, direction)

    def action_edge(self, end: int) -> None:
        self._set_cursor(len(self.keys) - 1 if end else 0, -1 if end else 1)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            self.post_message(self.HeaderClicked(self, event.x + self.scroll_offset.x))
            return
        i = self.scroll_offset.y + event.y - 1
        if 0 <= i < len(self.keys) and self.keys[i] is not None:
            self._set_cursor(i)
            if event.chain >= 2:
                self.action_select()

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(self.content_width, len(self.keys) + 1)
        self._follow_cursor()


def _segments(widget: VTable, text: Text) -> list[Segment]:
    text = text.copy()
    text.no_wrap = True
    text.end = ""
    return list(text.render(widget.app.console))
