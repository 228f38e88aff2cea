"""The table of `sbatch` options hpcbatch reads: names, parsing, and how `--help` shows them.

One row per option: how `core.directives` parses it (arity, converter, the
key it sets, or why it is ignored) and how `hpcbatch submit --help` and the
shell completion show it (group, metavar, help). Both read this table, so the
help cannot drift from the parser. Pure and standard-library only, like
`core.directives`: `hpcbatch submit` imports it on every run.
"""

from __future__ import annotations

from hpcbatch.core import option_values as conv

TYPE_CHECKING = False  # importing typing would cost `hpcbatch submit` start-up
if TYPE_CHECKING:
    from typing import Final, Literal

__all__ = ["IGNORED", "OPTIONS", "OPTION_GROUPS", "Option", "help_rows"]


class Option:
    """One row of the option table: how to parse it, and how `--help` shows it."""

    __slots__ = ("arity", "convert", "group", "help", "ignored", "key", "metavar", "names")

    def __init__(
        self,
        names: tuple[str, ...],
        key: str,
        arity: Literal["value", "flag", "optional"] = "value",
        convert: conv.Converter | None = conv.text,
        ignored: str | None = None,  # why it is accepted but has no effect here
        *,
        group: str,
        metavar: str = "",
        help: str = "",
    ) -> None:
        self.names = names
        self.key = key
        self.arity = arity
        self.convert = convert
        self.ignored = ignored
        self.group = group
        self.metavar = metavar
        self.help = help if ignored is None else f"ignored: {ignored}"


# The groups of `hpcbatch submit --help`, in order, as in docs/job-scripts.md.
JOB, RESOURCES, TIME, FILES, PLACEMENT, CONTROL, ARRAYS, CONTAINERS, IGNORED = (
    "Job",
    "Resources (per host)",
    "Time",
    "Files and environment",
    "Placement on hosts",
    "Job control (when, in what order, held, requeued)",
    "Arrays and dependencies",
    "Containers",
    "Accepted and ignored (Slurm options with no meaning here)",
)
OPTION_GROUPS: Final = (
    JOB, RESOURCES, TIME, FILES, PLACEMENT, CONTROL, ARRAYS, CONTAINERS, IGNORED,
)  # fmt: skip

OPTIONS: Final = (
    Option(("-J", "--job-name"), "name", group=JOB, metavar="NAME", help="the job's name (%x)"),
    Option(
        ("--mail-type",),
        "mail_type",
        group=JOB,
        metavar="TYPES",
        help="mail on BEGIN, END, FAIL, REQUEUE, TIME_LIMIT_50/80/90, ALL (comma-separated)",
    ),
    Option(("--mail-user",), "mail_user", group=JOB, metavar="ADDR", help="mail to (default: you)"),
    Option(
        ("-p", "--partition"),
        "queue",
        convert=conv.partition,
        group=JOB,
        metavar="QUEUE",
        help="the queue (default: the inventory's default queue)",
    ),
    Option(
        ("--queue",),
        "queue",
        convert=conv.partition,
        group=JOB,
        metavar="QUEUE",
        help="the same as --partition",
    ),
    Option(
        ("--share-id",),
        "share_id",
        group=JOB,
        metavar="ID",
        help="the fair-share identifier the job is charged to (default: your user name)",
    ),
    Option(
        ("--tag",),
        "tags",
        convert=conv.tags,
        group=JOB,
        metavar="KEY=VALUE",
        help="a tag (AWS Batch's); repeat for more, `hpcbatch jobs --tag` filters",
    ),
    Option(
        ("-N", "--nodes"),
        "nodes",
        convert=conv.nodes,
        group=RESOURCES,
        metavar="N",
        help="number of hosts",
    ),
    Option(
        ("-n", "--ntasks"),
        "ntasks",
        convert=conv.integer(1, 1_000_000),
        group=RESOURCES,
        metavar="N",
        help="total number of tasks, at least --nodes",
    ),
    Option(
        ("--ntasks-per-node",),
        "ntasks_per_node",
        convert=conv.integer(1, 100_000),
        group=RESOURCES,
        metavar="N",
        help="tasks on each host",
    ),
    Option(
        ("-c", "--cpus-per-task"),
        "cpus_per_task",
        convert=conv.integer(1, 100_000),
        group=RESOURCES,
        metavar="N",
        help="CPUs for each task",
    ),
    Option(
        ("--mem",),
        "memory_mb",
        convert=conv.memory_or_all,
        group=RESOURCES,
        metavar="SIZE",
        help="memory per host (4G, 512M; 0: the whole host, as --exclusive)",
    ),
    Option(
        ("--mem-per-cpu",),
        "mem_per_cpu_mb",
        convert=conv.memory,
        group=RESOURCES,
        metavar="SIZE",
        help="memory per CPU",
    ),
    Option(
        ("--mem-per-gpu",),
        "mem_per_gpu_mb",
        convert=conv.memory,
        group=RESOURCES,
        metavar="SIZE",
        help="memory per GPU",
    ),
    Option(
        ("--cpus-per-gpu",),
        "cpus_per_gpu",
        convert=conv.integer(1, 100_000),
        group=RESOURCES,
        metavar="N",
        help="CPUs per GPU",
    ),
    Option(
        ("--gpus-per-task",),
        "gpus_per_task",
        convert=conv.integer(1, 1_000),
        group=RESOURCES,
        metavar="N",
        help="GPUs for each task",
    ),
    Option(
        ("--gres",),
        "gpus",
        convert=conv.gres,
        group=RESOURCES,
        metavar="gpu[:TYPE]:N",
        help="GPUs per host, of a type (gpu:h100:2) if given",
    ),
    Option(
        ("--gpus-per-node",),
        "gpus",
        convert=conv.gpus_per_node,
        group=RESOURCES,
        metavar="[TYPE:]N",
        help="GPUs per host",
    ),
    Option(
        ("-G", "--gpus"),
        "gpus_per_job",
        convert=conv.gpus_per_job,
        group=RESOURCES,
        metavar="[TYPE:]N",
        help="GPUs for the whole job, divided evenly over the hosts",
    ),
    Option(
        ("-t", "--time"),
        "time_limit_s",
        convert=conv.time_limit,
        group=TIME,
        metavar="TIME",
        help="time limit (30, 4:30:00, 2-12); default: the queue's",
    ),
    Option(
        ("--signal",),
        "warn_signal",
        convert=conv.warn_signal,
        group=TIME,
        metavar="[B:]SIG[@SECS]",
        help="a warning signal before the time limit (default 60 s)",
    ),
    Option(
        ("-o", "--output"),
        "output",
        group=FILES,
        metavar="FILE",
        help="standard output file (patterns %j %A %a %x %N %u)",
    ),
    Option(("-e", "--error"), "error", group=FILES, metavar="FILE", help="standard error file"),
    Option(
        ("-D", "--chdir"),
        "workdir",
        group=FILES,
        metavar="DIR",
        help="working directory on the host",
    ),
    Option(
        ("--export",),
        "export",
        convert=conv.export,
        group=FILES,
        metavar="ALL|NONE|VAR[=VAL],...",
        help="which of your environment variables the job gets",
    ),
    Option(
        ("--secret",),
        "secrets",
        convert=conv.secret,
        group=FILES,
        metavar="VAR=NAME,...",
        help="set VAR to the stored secret NAME at launch (hpcbatch secret; repeatable)",
    ),
    Option(
        ("--exclusive",),
        "exclusive",
        arity="optional",
        convert=conv.exclusive,
        group=PLACEMENT,
        help="whole hosts, shared with no other job",
    ),
    Option(
        ("--fabric",),
        "fabric",
        group=PLACEMENT,
        metavar="NAME",
        help="all hosts in one fabric island of this kind (ib matches ib-a; any: any island)",
    ),
    # Host targeting (core.targeting): rows kept together.
    Option(
        ("-w", "--nodelist"),
        "nodelist",
        convert=conv.hostlist,
        group=PLACEMENT,
        metavar="HOSTLIST",
        help="run on these hosts, every one of them (node[1-2])",
    ),
    Option(
        ("-x", "--exclude"),
        "exclude",
        convert=conv.hostlist,
        group=PLACEMENT,
        metavar="HOSTLIST",
        help="never on these hosts",
    ),
    Option(
        ("-C", "--constraint"),
        "constraint",
        convert=conv.constraint,
        group=PLACEMENT,
        metavar="EXPR",
        help="host features and labels: nvlink&(ib|efa), zone=a",
    ),
    Option(
        ("--main-node",),
        "main_node",
        group=PLACEMENT,
        metavar="INDEX",
        help="the node whose end ends the job (default 0)",
    ),
    Option(
        ("--launch-mode",),
        "launch_mode",
        group=PLACEMENT,
        metavar="main|all",
        help="the script on the main node only (mpirun) or on every node",
    ),
    # Job control (core.jobcontrol): rows kept together.
    Option(
        ("--begin",),
        "begin",
        convert=conv.clock_time,
        group=CONTROL,
        metavar="TIME",
        help="not before TIME (now+1hour, 16:00, tomorrow, 2026-12-24T08:00)",
    ),
    Option(
        ("--deadline",),
        "deadline",
        convert=conv.clock_time,
        group=CONTROL,
        metavar="TIME",
        help="fail (DeadLine) if it cannot end by TIME",
    ),
    Option(
        ("-H", "--hold"),
        "hold",
        arity="flag",
        group=CONTROL,
        help="submit held (JobHeldUser) until hpcbatch release",
    ),
    Option(
        ("--priority",),
        "priority",
        convert=conv.integer(0, 1_000_000),
        group=CONTROL,
        metavar="N",
        help="order within the queue, higher first (default 0)",
    ),
    Option(
        ("--nice",),
        "nice",
        arity="optional",
        convert=conv.nice,
        group=CONTROL,
        metavar="[N]",
        help="wait behind jobs of the same priority (default 100; negative: admins)",
    ),
    Option(
        ("--requeue",),
        "requeue",
        arity="flag",
        group=CONTROL,
        help="a job lost with its host gets another attempt",
    ),
    Option(
        ("--no-requeue",),
        "no_requeue",
        arity="flag",
        group=CONTROL,
        help="never requeued (not on host loss, not by hpcbatch requeue)",
    ),
    Option(("-a", "--array"), "array", group=ARRAYS, metavar="SPEC", help="a job array (0-9%2)"),
    Option(
        ("-d", "--dependency"),
        "dependency",
        group=ARRAYS,
        metavar="TYPE:JOBID[:...]",
        help="dependencies (afterok:41, singleton)",
    ),
    Option(
        ("--image", "--container-image"),
        "image",
        group=CONTAINERS,
        metavar="IMAGE",
        help="run the script in a container image",
    ),
    Option(
        ("--mount", "--container-mounts"),
        "mounts",
        convert=conv.mounts,
        group=CONTAINERS,
        metavar="SRC[:DST][:ro],...",
        help="extra bind mounts into the container",
    ),
    Option(("-A", "--account"), "account", ignored="hpcbatch keeps no accounts", group=IGNORED),
    Option(
        ("--qos",),
        "qos",
        ignored="there are no QOS levels; queues have priorities",
        group=IGNORED,
    ),
    Option(("--open-mode",), "open_mode", ignored="not supported", group=IGNORED),
)


def help_rows() -> list[tuple[str, tuple[str, ...], str, str, str]]:
    """(group, names, metavar, arity, help) of every option, in table order: what
    `hpcbatch submit --help` and the shell completion show, so they cannot drift."""
    return [(o.group, o.names, o.metavar, o.arity, o.help) for o in OPTIONS]
