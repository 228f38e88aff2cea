"""State colours taken from the active Textual theme, so dark and light both read well.

Rows are drawn as Rich text, which cannot use CSS variables; the theme's own
success/warning/error/accent colours are looked up instead, and the views
redraw when the theme changes.
"""

from __future__ import annotations

from textual.app import App
from textual.theme import Theme

FALLBACK = {
    "success": "green",
    "warning": "yellow",
    "error": "red",
    "accent": "cyan",
    "primary": "blue",
    "secondary": "magenta",
    "foreground": "default",
}

JOB_ROLE = {
    "SUBMITTED": "secondary",
    "PENDING": "secondary",
    "RUNNABLE": "warning",
    "STARTING": "accent",
    "RUNNING": "success",
    "SUCCEEDED": "foreground",
    "FAILED": "error",
}
HOST_ROLE = {
    "idle": "success",
    "mixed": "accent",
    "allocated": "primary",
    "draining": "warning",
    "drained": "warning",
    "down": "error",
    "unreachable": "error",
    "connecting": "secondary",
    "unknown": "secondary",
}


class Palette:
    """Colour names for states under one theme."""

    def __init__(self, theme: Theme | None) -> None:
        self.colors = dict(FALLBACK)
        if theme is not None:
            for role in FALLBACK:
                value = getattr(theme, role, None)
                if isinstance(value, str) and value:
                    self.colors[role] = value
        self.dark = True if theme is None else bool(theme.dark)

    def role(self, role: str) -> str:
        return self.colors.get(role, "default")

    def job(self, state: str) -> str:
        style = self.role(JOB_ROLE.get(state, "foreground"))
        return f"bold {style}" if state in ("RUNNING", "FAILED") else style

    def host(self, state: str) -> str:
        return self.role(HOST_ROLE.get(state, "foreground"))

    @property
    def dim(self) -> str:
        return "dim"


def palette(app: App[object]) -> Palette:
    return Palette(app.current_theme)
