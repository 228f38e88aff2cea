"""User strings that reach other users' terminals: refused at submit, escaped on output.

A job name, a definition name or a path is typed by one user and printed by
`hpcbatch jobs` to every user. A control character in it (an escape sequence
that moves the cursor, retitles the terminal or hides text, or a bidirectional
override that reorders what is shown) would act on another user's terminal.
So the controller refuses such characters in the strings it stores
(`control_problem`), and the CLI escapes anything it prints from stored data
(`printable`), which also covers rows stored before the check existed.
Standard library only: the CLI imports it on every listing.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, and the Unicode bidirectional formatting marks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_TAB = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, tabs: bool = False) -> str:
    """`value` as text with every control character shown as an escape (`\\x1b`).

    `tabs=True` keeps tab characters (a script's indentation); tables escape them.
    """
    text = value if isinstance(value, str) else str(value)
    pattern = _CONTROL_BUT_TAB if tabs else _CONTROL
    return pattern.sub(_escape, text)


def control_problem(value: str) -> str | None:
    """Why `value` cannot be stored as a name or path (its first control character,
    escaped), or None when it is plain text."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    return f"contains a control character ({_escape(found)} at position {found.start()})"
