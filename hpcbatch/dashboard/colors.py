"""State colours taken from the active Textual theme, so dark and light both read well.

Rows are drawn as Rich text, which cannot use CSS variables: the views ask
for a palette matching the active theme's background and redraw when the
theme changes.
"""

from __future__ import annotations

from textual.app import App
from textual.theme import Theme

# Fixed colours per background: Textual's own themes give some roles colours too
# close to their backgrounds (textual-dark's secondary is a dark navy) or to
# each other (its accent and warning are one orange), and a state must read
# at a glance. These pairs keep a contrast ratio above 4.5 on either background.
DARK = {
    "waiting": "#b4a7ff",
    "runnable": "#e5c07b",
    "starting": "#56b6c2",
    "running": "#98c379",
    "done": "#9da5b4",
    "failed": "#ff7b86",
    "allocated": "#61afef",
    "gpu": "#d19af0",
}
LIGHT = {
    "waiting": "#5a4fcf",
    "runnable": "#8a5a00",
    "starting": "#0b6e7a",
    "running": "#1a7f37",
    "done": "#57606a",
    "failed": "#c4101e",
    "allocated": "#0757b8",
    "gpu": "#7a3fd1",
}

JOB_ROLE = {
    "SUBMITTED": "waiting",
    "PENDING": "waiting",
    "RUNNABLE": "runnable",
    "STARTING": "starting",
    "RUNNING": "running",
    "SUCCEEDED": "done",
    "FAILED": "failed",
}
HOST_ROLE = {
    "idle": "running",
    "mixed": "starting",
    "allocated": "allocated",
    "draining": "runnable",
    "drained": "runnable",
    "down": "failed",
    "unreachable": "failed",
    "connecting": "waiting",
    "unknown": "waiting",
}
ROLE_ALIASES = {
    "success": "running",
    "error": "failed",
    "primary": "allocated",
    "warning": "runnable",
}


class Palette:
    """Colour names for states on a dark or a light background."""

    def __init__(self, theme: Theme | None) -> None:
        self.dark = True if theme is None else bool(theme.dark)
        self.colors = DARK if self.dark else LIGHT

    def role(self, role: str) -> str:
        return self.colors.get(ROLE_ALIASES.get(role, role), "default")

    def job(self, state: str) -> str:
        style = self.role(JOB_ROLE.get(state, "done"))
        return f"bold {style}" if state in ("RUNNING", "FAILED") else style

    def host(self, state: str) -> str:
        return self.role(HOST_ROLE.get(state, "done"))


def palette(app: App[object]) -> Palette:
    return Palette(app.current_theme)
