"""Modal screens: confirm an action, choose columns, the key-binding help.

Escape always dismisses without acting: a confirmation answers yes only to
`y` or its button, never to Escape or a stray Enter on the default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, SelectionList, Static
from textual.widgets.selection_list import Selection


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question about one action; `n` and Escape are both no."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Back"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; max-width: 95%; height: auto; border: thick $error; background: $surface;
        padding: 1 2;
    }
    ConfirmScreen #question { text-style: bold; }
    ConfirmScreen #detail { color: $text-muted; margin-top: 1; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """

    def __init__(self, question: str, detail: str = "", yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, id="question")
            if self.detail:
                yield Static(self.detail, id="detail")
            with Horizontal():
                yield Button("No (n)", id="no")
                yield Button(f"{self.yes} (y)", id="yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ColumnsScreen(ModalScreen[list[str] | None]):
    """Pick the jobs table's columns; Enter keeps the choice, Escape drops it."""

    BINDINGS = [
        Binding("enter", "keep", "Apply", priority=True),
        Binding("escape", "drop", "Back"),
    ]
    DEFAULT_CSS = """
    ColumnsScreen { align: center middle; }
    ColumnsScreen > Vertical {
        width: 44; height: auto; max-height: 90%; border: thick $accent; background: $surface;
    }
    ColumnsScreen SelectionList { height: auto; max-height: 20; }
    ColumnsScreen Label { padding: 0 1; color: $text-muted; }
    """

    def __init__(self, columns: Sequence[tuple[str, str]], chosen: Iterable[str]) -> None:
        super().__init__()
        self.columns = columns
        self.chosen = set(chosen)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Columns: space toggles, Enter applies, Esc cancels")
            yield SelectionList[str](
                *(Selection(label, key, key in self.chosen) for key, label in self.columns)
            )

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()

    def action_keep(self) -> None:
        chosen = list(self.query_one(SelectionList).selected)
        self.dismiss([str(c) for c in chosen] or None)

    def action_drop(self) -> None:
        self.dismiss(None)


HELP = """\
[b]Everywhere[/b]
  1 2 3        Cluster, Jobs, Queues views
  ?            this help
  t            dark / light theme
  ctrl+r       reload everything from the controller
  q            quit

[b]Jobs[/b]                         (filters are squeue's flags)
  enter        open the job: spec, timeline, script, live log
  /            filter: -t RUNNING,PD -u alice -p gpu -n name -w node3 -j 12 word
  space        expand / collapse an array
  s  r         sort by the next column / reverse the order
  c            choose columns
  f            hide / show finished jobs
  x            cancel (before it runs) or terminate: asks first

[b]Cluster[/b]
  enter        the jobs on this host
  d  u         drain / resume the host: asks first

[b]Queues[/b]
  enter        the jobs of this queue
  e  d         enable / disable the queue: asks first

[b]Job detail[/b]
  left right   Overview, Script, Log tabs; up/down/page keys scroll
  o            stdout / stderr
  n            next node of a multi-node job
  f            follow the log on / off
  x            cancel or terminate: asks first
  escape       back (Escape never performs an action)
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text.from_markup(HELP))

    def action_close(self) -> None:
        self.dismiss(None)
