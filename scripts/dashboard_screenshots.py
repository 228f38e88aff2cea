"""Write the SVG screenshots in docs/img/ that docs/dashboard.md shows.

    .venv/bin/python scripts/dashboard_screenshots.py

The data is tests/dashboard/sample.py (fixed records, a frozen clock, UTC),
the same the snapshot tests draw, so the pictures change only when the
dashboard's drawing does.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["TZ"] = "UTC"
time.tzset()

from textual.pilot import Pilot  # noqa: E402
from textual.widgets import TabbedContent  # noqa: E402

from hpcbatch.dashboard import create_app  # noqa: E402
from hpcbatch.dashboard.detail import JobDetailScreen  # noqa: E402
from hpcbatch.dashboard.dialogs import ConfirmScreen  # noqa: E402
from hpcbatch.dashboard.jobs_view import JobsView  # noqa: E402
from tests.dashboard import sample  # noqa: E402

OUT = ROOT / "docs" / "img"
Step = Callable[[Pilot[Any]], Awaitable[None]]


async def nothing(pilot: Pilot[Any]) -> None:
    return None


def detail(tab: str) -> Step:
    async def step(pilot: Pilot[Any]) -> None:
        screen = JobDetailScreen(101, None, detail=sample.detail(), log_text=sample.LOG)
        await pilot.app.push_screen(screen)
        await pilot.pause()
        screen.query_one("#detail-tabs", TabbedContent).active = tab

    return step


async def expanded(pilot: Pilot[Any]) -> None:
    view = pilot.app.query_one(JobsView)
    view.set_filter("-u alice")
    await pilot.pause()
    view.table.move_to("120")
    await pilot.press("space")


async def confirm(pilot: Pilot[Any]) -> None:
    await pilot.app.push_screen(
        ConfirmScreen(
            "Cancel job 101 (cfd-mesh, RUNNING)?",
            "Jobs not yet running are cancelled; running ones are terminated. Both end FAILED.",
            "Cancel job",
        )
    )


async def help_(pilot: Pilot[Any]) -> None:
    await pilot.press("question_mark")


SHOTS: list[tuple[str, str, bool, tuple[int, int], Step]] = [
    ("dashboard-cluster", "cluster", False, (100, 24), nothing),
    ("dashboard-jobs", "jobs", False, (100, 24), nothing),
    ("dashboard-jobs-light", "jobs", True, (100, 24), nothing),
    ("dashboard-jobs-array", "jobs", False, (100, 30), expanded),
    ("dashboard-queues", "queues", False, (100, 16), nothing),
    ("dashboard-detail", "jobs", False, (100, 36), detail("tab-overview")),
    ("dashboard-log", "jobs", False, (100, 24), detail("tab-log")),
    ("dashboard-confirm", "jobs", False, (100, 24), confirm),
    ("dashboard-help", "jobs", False, (100, 44), help_),
]


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, view, light, size, step in SHOTS:
        app = create_app(model=sample.model(), clock=sample.clock, initial=view, light=light)
        app.animation_level = "none"  # a tab underline caught mid-slide differs run to run
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await step(pilot)
            await pilot.pause(0.3)
            app.save_screenshot(filename=f"{name}.svg", path=str(OUT))
        print(OUT / f"{name}.svg")


if __name__ == "__main__":
    asyncio.run(main())
