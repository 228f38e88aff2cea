"""The Cluster view: every host, grouped by fabric island, with allocation bars.

Like `sinfo` crossed with `flux top`: a summary line of host states and used
resources, then one row per host (state, CPU/memory/GPU bars, labels, jobs).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from hpcbatch.dashboard.colors import Palette, palette
from hpcbatch.dashboard.model import Host, Model, host_state
from hpcbatch.dashboard.table import VTable
from hpcbatch.dashboard.words import bar, counts_text, memory

HOST_STATES = (
    "idle", "mixed", "allocated", "draining", "drained", "down", "unreachable", "connecting",
)  # fmt: skip


class ShowJobs(Message):
    """Switch to the jobs view with this filter (e.g. `-w node3`)."""

    def __init__(self, filter_text: str) -> None:
        super().__init__()
        self.filter_text = filter_text


class HostAction(Message):
    """Drain or resume a host; the app asks first."""

    def __init__(self, host: str, action: str) -> None:
        super().__init__()
        self.host = host
        self.action = action


def summary_text(model: Model, pal: Palette) -> Text:
    counts = model.host_counts()
    text = Text(no_wrap=True, end="")
    text.append(f"Hosts {len(model.hosts)}", "bold")
    for state in HOST_STATES:
        if counts.get(state):
            text.append("  ")
            text.append(f"{state} {counts[state]}", pal.host(state))
    cpus = sum(int(h.get("cpus") or 0) for h in model.hosts.values())
    used = sum(int(h.get("alloc_cpus") or 0) for h in model.hosts.values())
    gpus = sum(len(h.get("gpus") or []) for h in model.hosts.values())
    gused = sum(len(h.get("alloc_gpus") or []) for h in model.hosts.values())
    text.append(f"\nCPUs {used}/{cpus}  GPUs {gused}/{gpus}  ", "")
    text.append("Jobs ", "bold")
    text.append(counts_text(dict(model.job_counts())) or "none")
    return text


def usage(used: float, total: float, label: str, width: int, style: str) -> Text:
    bar_w = max(width - len(label) - 1, 0)
    full, empty = bar(used, total, bar_w)
    text = Text(no_wrap=True, end="")
    text.append(full, style)
    text.append(empty, "dim")
    text.append(" " + label)
    return text


def actual(h: Host) -> str:
    """What the host's jobs use now (agents' cgroup samples), beside the allocation bars;
    `limits: not enforced` where its jobs run unconfined."""
    now = h.get("actual")
    used = f"using {now['cpus']:.1f} cpu {memory(int(now['memory_mb']))}" if now else ""
    if now and now.get("gpu_util") is not None:
        used += f" gpu {now['gpu_util']:.0f}%"
    limits = ((h.get("facts") or {}).get("limits")) or {}
    if limits and not limits.get("enforced"):
        used = f"{used} (limits: not enforced)".strip()
    return used


def host_row(h: Host, jobs: list[int], pal: Palette, width: int) -> Text:
    state = host_state(h)
    cpus = int(h.get("cpus") or 0)
    acpu = int(h.get("alloc_cpus") or 0)
    mem = int(h.get("memory_mb") or 0)
    amem = int(h.get("alloc_memory_mb") or 0)
    gpus = len(h.get("gpus") or [])
    agpu = len(h.get("alloc_gpus") or [])
    bar_w = 16 if width >= 100 else 12
    rest = max(width - (10 + 1 + 11 + 1 + bar_w * 2 + 2 + 11), 8)
    text = Text(no_wrap=True, end="")
    text.append(f"{h['name'][:10]:<10} ", "bold")
    text.append(f"{state[:11]:<11} ", pal.host(state))
    style = pal.role("primary")
    text.append_text(usage(acpu, cpus, f"{acpu}/{cpus}".ljust(5), bar_w, style))
    text.append(" ")
    text.append_text(
        usage(amem, mem, f"{memory(amem) if amem else '0'}/{memory(mem)}".ljust(9), bar_w, style)
    )
    text.append(" ")
    label = f"{agpu}/{gpus}" if gpus else "-"
    text.append_text(usage(agpu, gpus, label.ljust(3), 10, pal.role("gpu")))
    text.append(" ")
    labels = ",".join(f"{k}={v}" for k, v in sorted((h.get("labels") or {}).items()))
    ids = ",".join(str(j) for j in jobs)
    why = h.get("admin_reason") or (h.get("reason") if state in ("down", "unreachable") else None)
    tail = " ".join(
        p for p in (actual(h), f"jobs {ids}" if ids else "", labels, f"({why})" if why else "") if p
    )
    text.append(tail[:rest], "")
    return text


class ClusterView(Vertical):
    BINDINGS = [
        Binding("d", "host('drain')", "Drain"),
        Binding("u", "host('resume')", "Resume"),
    ]
    DEFAULT_CSS = """
    ClusterView { height: 1fr; }
    ClusterView #cluster-summary { height: 2; background: $panel; padding: 0 1; }
    """

    def __init__(self, model: Model, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model

    def compose(self) -> ComposeResult:
        yield Static(id="cluster-summary")
        yield VTable(id="cluster-table")

    @property
    def table(self) -> VTable:
        return self.query_one("#cluster-table", VTable)

    def redraw(self) -> None:
        if not self.query("#cluster-table"):
            return  # the app is closing: the children went before the timers stopped
        pal = palette(self.app)
        self.query_one("#cluster-summary", Static).update(summary_text(self.model, pal))
        lines: list[tuple[str | None, Any]] = []
        for island, hosts in self.model.islands().items():
            counts: dict[str, int] = {}
            for h in hosts:
                counts[host_state(h)] = counts.get(host_state(h), 0) + 1
            title = f"fabric island {island}" if island else "no fabric island"
            what = ", ".join(f"{n} {s}" for s, n in counts.items())
            lines.append(
                (None, f"── {title}: {len(hosts)} host{'s' if len(hosts) != 1 else ''} ({what})")
            )
            lines.extend((h["name"], h) for h in hosts)
        on: dict[str, list[int]] = {}
        for job in self.model.jobs.values():
            if job["state"] in ("STARTING", "RUNNING"):
                for name in job.get("hosts") or []:
                    on.setdefault(name, []).append(int(job["id"]))

        def render(i: int, width: int) -> Text:
            key, item = lines[i]
            if key is None:
                return Text(str(item), no_wrap=True, end="")
            jobs = sorted(set(on.get(key, [])) | set(item.get("jobs") or []))
            return host_row(item, jobs, pal, width)

        bar_w = 16 if self.table.content_width >= 100 else 12
        header = Text(
            f"{'HOST':<10} {'STATE':<11} {'CPUS':<{bar_w}} {'MEMORY':<{bar_w}} "
            f"{'GPUS':<10} JOBS, LABELS",
            no_wrap=True,
            end="",
        )
        self.table.set_rows(header, [k for k, _ in lines], render)

    def on_resize(self) -> None:
        self.redraw()

    def on_vtable_selected(self, event: VTable.Selected) -> None:
        event.stop()
        self.post_message(ShowJobs(f"-w {event.key}"))

    def action_host(self, action: str) -> None:
        key = self.table.cursor_key
        if key is not None:
            self.post_message(HostAction(key, action))
