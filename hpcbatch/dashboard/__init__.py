"""The Textual dashboard: `hpcbatch dash`.

Talks to the controller only through its Unix-socket API (`dashboard.api`),
never the database; the import-layer test keeps it that way. `create_app()`
builds the application; the CLI imports this package only when `dash` runs.
"""

from __future__ import annotations

from hpcbatch.dashboard.app import DashApp, create_app

__all__ = ["DashApp", "create_app"]
