"""Tests for hpcbatch.core.directives: #SBATCH/#HPCBATCH lines and command-line options."""

from __future__ import annotations

import contextlib
import re
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch.core.directives import (
    EXTRA_KEYS,
    JOB_REQUEST_KEYS,
    DirectiveError,
    ExportSpec,
    ParsedOptions,
    expand_output_pattern,
    merge,
    parse_args,
    parse_script,
    split_submit_argv,
)


def values(*tokens: str) -> dict[str, object]:
    parsed = parse_args(list(tokens))
    assert parsed.warnings == []
    return parsed.values


def error(*tokens: str) -> str:
    with pytest.raises(DirectiveError) as info:
        parse_args(list(tokens))
    return str(info.value)


def script(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- parse_args: forms


@pytest.mark.parametrize(
    "tokens",
    [
        ["--cpus-per-task=4"],
        ["--cpus-per-task", "4"],
        ["-c", "4"],
        ["-c4"],
    ],
)
def test_option_forms(tokens: list[str]) -> None:
    assert values(*tokens) == {"cpus_per_task": 4}


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["-J", "train"], {"name": "train"}),
        (["--job-name=my job"], {"name": "my job"}),
        (["--mem=4G"], {"memory_mb": 4096}),
        (["--mem", "512"], {"memory_mb": 512}),
        (["--mem-per-cpu=1.5G"], {"mem_per_cpu_mb": 1536}),
        (["--gres=gpu:2"], {"gpus": 2}),
        (["--gres=gpu"], {"gpus": 1}),
        (["--gres=none"], {"gpus": 0}),
        (["--gres=gpu:0"], {"gpus": 0}),
        (["-G", "4"], {"gpus_per_job": 4}),
        (["--gpus=4"], {"gpus_per_job": 4}),
        (["--gpus-per-node", "2"], {"gpus": 2}),
        (["-t", "30"], {"time_limit_s": 1800}),
        (["--time=1-00:00:00"], {"time_limit_s": 86400}),
        (["--time=UNLIMITED"], {"time_limit_s": None}),
        (["-o", "out-%j.txt"], {"output": "out-%j.txt"}),
        (["--error=err.txt"], {"error": "err.txt"}),
        (["-D", "/scratch/run"], {"workdir": "/scratch/run"}),
        (["--chdir=rel"], {"workdir": "rel"}),
        (["-p", "gpu"], {"queue": "gpu"}),
        (["--partition=gpu"], {"queue": "gpu"}),
        (["--queue", "gpu"], {"queue": "gpu"}),
        (["-N", "2"], {"nodes": 2}),
        (["--nodes=3-3"], {"nodes": 3}),
        (["--ntasks-per-node=8"], {"ntasks_per_node": 8}),
        (["-n", "16"], {"ntasks": 16}),
        (["--exclusive"], {"exclusive": True}),
        (["-a", "1-10%2"], {"array": "1-10%2"}),
        (["--array=0-3"], {"array": "0-3"}),
        (["-d", "afterok:12"], {"dependency": "afterok:12"}),
        (["--dependency=afterany:1:2"], {"dependency": "afterany:1:2"}),
        (["--fabric=efa"], {"fabric": "efa"}),
        (["--image", "docker://alpine"], {"image": "docker://alpine"}),
        (["--container-mounts=/a:/b,/c:ro"], {"mounts": ["/a:/b,/c:ro"]}),
        (["--container-image", "alpine"], {"image": "alpine"}),
        (["--main-node=n1"], {"main_node": "n1"}),
        (["--launch-mode", "mpi"], {"launch_mode": "mpi"}),
        (["-J", "-weird"], {"name": "-weird"}),  # a value may start with -, as in getopt
    ],
)
def test_options(tokens: list[str], expected: dict[str, object]) -> None:
    assert values(*tokens) == expected


def test_later_option_wins() -> None:
    assert values("-c", "2", "--cpus-per-task=8") == {"cpus_per_task": 8}


def test_mem_and_mem_per_cpu_exclude_each_other() -> None:
    assert values("--mem=4G", "--mem-per-cpu=1G") == {"mem_per_cpu_mb": 1024}
    assert values("--mem-per-cpu=1G", "--mem=4G") == {"memory_mb": 4096}


def test_gpus_options_exclude_each_other() -> None:
    assert values("--gres=gpu:2", "--gpus=4") == {"gpus_per_job": 4}
    assert values("--gpus=4", "--gpus-per-node=1") == {"gpus": 1}


def test_empty_tokens() -> None:
    assert parse_args([]) == ParsedOptions()


def test_double_dash_ends_options() -> None:
    assert values("-c", "2", "--") == {"cpus_per_task": 2}


# --------------------------------------------------------------------------- parse_args: values


def test_export_all_none_and_names() -> None:
    assert values("--export=ALL") == {"export": ExportSpec(everything=True)}
    assert values("--export=NONE") == {"export": ExportSpec(everything=False)}
    assert values("--export=ALL,FOO=bar,BAZ") == {
        "export": ExportSpec(everything=True, names=("BAZ",), values=(("FOO", "bar"),))
    }
    assert values("--export=PATH,X=1=2") == {
        "export": ExportSpec(everything=False, names=("PATH",), values=(("X", "1=2"),))
    }
    assert values("--export=X=") == {"export": ExportSpec(everything=False, values=(("X", ""),))}


def test_export_environment() -> None:
    environ = {"HOME": "/home/u", "PATH": "/bin", "BASH_FUNC_f%%": "() {}", "Z": "a\0b"}
    assert ExportSpec(everything=True, values=(("X", "1"),)).environment(environ) == {
        "HOME": "/home/u",
        "PATH": "/bin",
        "X": "1",
    }
    only = ExportSpec(everything=False, names=("PATH", "MISSING"), values=(("X", "1"),))
    assert only.environment(environ) == {"PATH": "/bin", "X": "1"}
    assert ExportSpec(everything=False).environment(environ) == {}


def test_export_bad_name() -> None:
    assert error("--export=1BAD") == (
        "command line: --export: '1BAD' is not a variable name or NAME=value"
        " (values cannot contain commas)"
    )


def test_gres_types_and_others_warn() -> None:
    parsed = parse_args(["--gres=gpu:a100:2,nvme:1"])
    assert parsed.values == {"gpus": (2, "a100")}  # merge splits it: gpus, gpu_type
    assert parsed.warnings == [
        "command line: ignored: --gres nvme:1 (only gpu resources are scheduled)",
    ]
    parsed = parse_args(["--gres=gpu:tesla"])
    assert parsed.values == {"gpus": (1, "tesla")}
    assert parsed.warnings == []
    parsed = parse_args(["--gres=nvme:1"])
    assert parsed.values == {}
    assert len(parsed.warnings) == 1


def test_gpus_with_type_keeps_it() -> None:
    parsed = parse_args(["--gpus-per-node=H100:4"])
    assert parsed.values == {"gpus": (4, "h100")}
    assert parsed.warnings == []


def test_partition_list_takes_first() -> None:
    parsed = parse_args(["-p", "gpu,cpu"])
    assert parsed.values == {"queue": "gpu"}
    assert parsed.warnings == [
        "command line: only the first of the partitions 'gpu,cpu' is used: gpu"
    ]


def test_exclusive_with_mode_warns() -> None:
    parsed = parse_args(["--exclusive=user"])
    assert parsed.values == {"exclusive": True}
    assert parsed.warnings == [
        "command line: ignored: the 'user' in --exclusive=user (the job gets whole hosts)"
    ]


@pytest.mark.parametrize(
    ("tokens", "shown"),
    [
        (["-A", "proj"], "-A proj (hpcbatch keeps no accounts)"),
        (["--account=proj"], "--account=proj (hpcbatch keeps no accounts)"),
        (["--qos=high"], "--qos=high (there are no QOS levels; queues have priorities)"),
        (["--open-mode=append"], "--open-mode=append (not supported)"),
    ],
)
def test_ignored_options_warn(tokens: list[str], shown: str) -> None:
    parsed = parse_args(tokens)
    assert parsed.values == {}
    assert len(parsed.warnings) == 1
    assert parsed.warnings[0].startswith(f"command line: ignored: {shown}")


# --------------------------------------------------------------------------- parse_args: errors


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["--mem=4Q"], "command line: --mem: '4Q' is not a memory size (e.g. 4G, 512M)"),
        (["--mem-per-cpu", "x"], "command line: --mem-per-cpu: 'x' is not a memory size"),
        (["--mem-per-cpu=0"], "command line: --mem-per-cpu: '0' is no memory at all"),
        (["-t", "abc"], "command line: -t: 'abc' is not a time (e.g. 30, 1:30:00, 2-00:00:00)"),
        (["-c", "x"], "command line: -c: 'x' is not a whole number"),
        (["-c", "0"], "command line: -c: '0' is less than 1"),
        (["-c", "-1"], "command line: -c: '-1' is not a whole number"),
        (["-c=4"], "command line: -c: '=4' is not a whole number"),
        (["--cpus-per-task=100001"], "command line: --cpus-per-task: '100001' is more than 100000"),
        (["-N", "2-4"], "command line: -N: '2-4': node ranges are not supported"),
        (["--nodes=x"], "command line: --nodes: 'x' is not a node count (e.g. 2)"),
        (["--nodes=2-"], "command line: --nodes: '2-' is not a node count"),
        (["--gres=gpu:x:y"], "command line: --gres: 'x:y' is not a GPU count"),
        (["--gres=gpu:2,gpu:1"], "command line: --gres: 'gpu:2,gpu:1' names gpu more than once"),
        (["--gres=:2"], "command line: --gres: ':2' in ':2' is not a resource"),
        (["--gres=gpu:5000"], "command line: --gres: '5000' is more than 1024 GPUs"),
        (["--gpus=-1"], "command line: --gpus: '-1' is not a GPU count"),
        (["-G", ":2"], "command line: -G: ':2' is not a GPU count"),
        (["--mem"], "command line: --mem needs a value"),
        (["-c"], "command line: -c needs a value"),
        (["--job-name="], "command line: --job-name needs a value"),
        (["--requeue=yes"], "command line: --requeue takes no value (got 'yes')"),
        (["-J", "a\0b"], "command line: -J: the value contains a NUL byte"),
        (["-p", "a,,b"], "command line: -p: 'a,,b' is not a queue name"),
        (["--foo"], "command line: unknown option --foo"),
        (["--partitio=x"], "command line: unknown option --partitio (did you mean --partition?)"),
        (["-q", "high"], "command line: unknown option -q"),
        (["job.sh"], "command line: unexpected argument 'job.sh' (options go before the script)"),
        (["-c", "2", "--", "x"], "command line: unexpected argument 'x'"),
    ],
)
def test_errors(tokens: list[str], message: str) -> None:
    assert error(*tokens).startswith(message)


def test_error_attributes() -> None:
    with pytest.raises(DirectiveError) as info:
        parse_args(["--mem=4Q"], "job.sh", 7)
    exc = info.value
    assert (exc.path, exc.line) == ("job.sh", 7)
    assert exc.message == "--mem: '4Q' is not a memory size (e.g. 4G, 512M)"
    assert str(exc) == "job.sh:7: --mem: '4Q' is not a memory size (e.g. 4G, 512M)"
    assert isinstance(exc, ValueError)


def test_non_strict_unknown_and_stray_warn() -> None:
    parsed = parse_args(["--hint", "nomultithread", "-c", "2", "stray"], "job.sh", 4, strict=False)
    assert parsed.values == {"cpus_per_task": 2}
    assert parsed.warnings == [
        "job.sh:4: unknown option --hint ignored",
        "job.sh:4: unexpected argument 'stray' ignored",
    ]


# --------------------------------------------------------------------------- parse_script


JOB = script(
    "#!/bin/bash",
    "#SBATCH --job-name=train",
    "#SBATCH -c 4 --mem=8G   # comment after options",
    "",
    "# an ordinary comment",
    "# SBATCH --time=5  (disabled: a space after #)",
    "#SBATCH --output='out %j.txt'",
    "   # an indented comment",
    "#SBATCH --time=2:00:00",
    "set -e",
    "#SBATCH --time=99",
    "srun python train.py",
)


def test_parse_script_reads_directives_until_first_command() -> None:
    opts, text = parse_script(JOB, "job.sh")
    assert text is JOB
    assert opts.values == {
        "name": "train",
        "cpus_per_task": 4,
        "memory_mb": 8192,
        "output": "out %j.txt",
        "time_limit_s": 7200,
    }
    assert opts.warnings == [
        "job.sh:11: ignored: a directive line after the first command (line 10);"
        " directives must come before any command, as in Slurm"
    ]


def test_late_directives_warn_once() -> None:
    opts, _ = parse_script(
        script("#!/bin/sh", "echo", "#SBATCH -c 2", "#HPCBATCH -c 3", "#SBATCH -c 4"), "a.sh"
    )
    assert opts.values == {}
    assert opts.warnings == [
        "a.sh:3: ignored: 3 directive lines after the first command (line 2);"
        " directives must come before any command, as in Slurm"
    ]


def test_hpcbatch_lines_override_sbatch_lines() -> None:
    opts, _ = parse_script(
        script(
            "#!/bin/sh",
            "#HPCBATCH --time=10 --mem-per-cpu=1G",
            "#SBATCH --time=20 --mem=4G -p slurmq",
        )
    )
    assert opts.values == {"time_limit_s": 600, "mem_per_cpu_mb": 1024, "queue": "slurmq"}


def test_not_directives() -> None:
    text = script(
        "#!/bin/sh",
        " #SBATCH -c 2",
        "#SBATCHX -c 3",
        "#sbatch -c 4",
        "##SBATCH -c 5",
        "#SBATCH",
        "#HPCBATCH\t-c 6",
    )
    opts, _ = parse_script(text)
    assert opts.values == {"cpus_per_task": 6}
    assert opts.warnings == []


def test_no_shebang_and_no_trailing_newline() -> None:
    opts, _ = parse_script("#SBATCH -J x")
    assert opts.values == {"name": "x"}


def test_empty_script() -> None:
    assert parse_script("") == (ParsedOptions(), "")


def test_quoting_and_comments_in_directives() -> None:
    opts, _ = parse_script(
        script(
            '#SBATCH --job-name="a # b"',
            "#SBATCH --output=out#1.txt #comment",
            "#SBATCH -e err\\ #x.txt",
            "#SBATCH --chdir '/tmp/it''s' # -c 3",
        )
    )
    assert opts.values == {
        "name": "a # b",
        "output": "out#1.txt",
        "error": "err #x.txt",
        "workdir": "/tmp/its",
    }


def test_unknown_directive_warns_with_line() -> None:
    opts, _ = parse_script(
        script("#!/bin/sh", "", "#SBATCH -c 2", "#SBATCH --foo", "true"), "job.sh"
    )
    assert opts.values == {"cpus_per_task": 2}
    assert opts.warnings == ["job.sh:4: unknown option --foo ignored"]


def test_ignored_directive_warns_with_line() -> None:
    opts, _ = parse_script(script("#!/bin/sh", "#SBATCH --qos=high"), "job.sh")
    assert opts.warnings == [
        "job.sh:2: ignored: --qos=high (there are no QOS levels; queues have priorities)"
    ]


def test_mail_options_are_kept() -> None:
    opts, _ = parse_script(
        script("#!/bin/sh", "#SBATCH --mail-type=END,FAIL", "#SBATCH --mail-user=a@b.c"), "job.sh"
    )
    assert opts.values == {"mail_type": "END,FAIL", "mail_user": "a@b.c"}
    assert opts.warnings == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            script("#!/bin/sh", "#SBATCH -c 2", "", "#SBATCH --mem=4Q"),
            "job.sh:4: --mem: '4Q' is not a memory size (e.g. 4G, 512M)",
        ),
        (script("#SBATCH --time=soon"), "job.sh:1: --time: 'soon' is not a time"),
        (script("#!/bin/sh", "#HPCBATCH -N 1-2"), "job.sh:2: -N: '1-2': node ranges"),
        (script("#SBATCH --gres=gpu:x:y"), "job.sh:1: --gres: 'x:y' is not a GPU count"),
        (script("#!/bin/sh", "#SBATCH -c"), "job.sh:2: -c needs a value"),
        (
            script("#!/bin/sh", "#SBATCH -J 'oops"),
            "job.sh:2: cannot split the #SBATCH line: No closing quotation",
        ),
        (
            script("#!/bin/sh", "", "#HPCBATCH -J oops\\"),
            "job.sh:3: cannot split the #HPCBATCH line: No escaped character",
        ),
        (
            "#!/bin/sh\n#SBATCH -c 2\r\necho\r\n",
            "job.sh:2: the script has DOS line breaks (\\r\\n); convert it with dos2unix",
        ),
    ],
)
def test_script_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(DirectiveError) as info:
        parse_script(text, "job.sh")
    assert str(info.value).startswith(message)
    assert info.value.path == "job.sh"


# --------------------------------------------------------------------------- merge


def opts(*tokens: str) -> ParsedOptions:
    return parse_args(list(tokens))


def test_merge_cli_overrides_script() -> None:
    from_script, _ = parse_script(script("#SBATCH -J a -t 10 --mem=4G -p q1"))
    merged = merge(from_script, opts("-J", "b", "--time=UNLIMITED"))
    assert merged == {"name": "b", "time_limit_s": None, "memory_mb": 4096, "queue": "q1"}


def test_merge_nothing() -> None:
    assert merge(ParsedOptions(), ParsedOptions()) == {}


@pytest.mark.parametrize(
    ("tokens", "cpus", "tasks_per_node"),
    [
        (["-c", "4"], 4, None),
        (["--ntasks-per-node=8"], 8, 8),
        (["-c", "2", "--ntasks-per-node=8"], 16, 8),
        (["-n", "8"], 8, 8),
        (["-n", "8", "-N", "2"], 4, 4),
        (["-n", "5", "-N", "2", "-c", "3"], 9, 3),  # ceil(5 / 2) tasks per node
        (["-n", "8", "-N", "2", "--ntasks-per-node=2"], 2, 2),  # explicit wins
        (["-N", "4"], None, None),
    ],
)
def test_merge_cpus(tokens: list[str], cpus: int | None, tasks_per_node: int | None) -> None:
    merged = merge(ParsedOptions(), opts(*tokens))
    assert merged.get("cpus") == cpus
    assert merged.get("ntasks_per_node") == tasks_per_node


def test_merge_derives_after_merging() -> None:
    from_script, _ = parse_script(script("#SBATCH --ntasks-per-node=4 --mem-per-cpu=1G -c 1"))
    merged = merge(from_script, opts("-c", "2"))
    assert merged["cpus"] == 8
    assert merged["memory_mb"] == 8192
    assert "mem_per_cpu_mb" not in merged


def test_merge_exclusive_groups_across_sources() -> None:
    from_script, _ = parse_script(script("#SBATCH --mem=64G --gres=gpu:8"))
    merged = merge(from_script, opts("--mem-per-cpu=2G", "-c", "4", "--gpus=2"))
    assert merged["memory_mb"] == 8192
    assert merged["gpus"] == 2
    merged = merge(from_script, opts("-c", "4"))
    assert merged["memory_mb"] == 65536
    assert merged["gpus"] == 8


def test_merge_gpus_per_job_divided_over_nodes() -> None:
    assert merge(ParsedOptions(), opts("--gpus=8", "-N", "2"))["gpus"] == 4
    with pytest.raises(DirectiveError) as info:
        merge(ParsedOptions(), opts("--gpus=3", "-N", "2"))
    assert str(info.value) == (
        "job options: --gpus=3 (per job) does not divide evenly over --nodes=2; use --gpus-per-node"
    )


def test_merge_ntasks_fewer_than_nodes() -> None:
    with pytest.raises(DirectiveError, match=r"--ntasks=1 is fewer than --nodes=2"):
        merge(ParsedOptions(), opts("-n", "1", "-N", "2"))


def test_merge_keys_are_documented() -> None:
    every_option = shlex.split(
        "-J j -c 2 --mem-per-cpu=1G -G 2 -t 5 -o o -e e -D d -p q -N 2 -n 4 --export=ALL"
        " --exclusive -a 1-2 -d afterok:1 --fabric=efa --image=i --mount=/a:/b --main-node=m"
        " --launch-mode=mpi --signal=USR1 -w n1 -x n2 -C f --gpus=h100:2 --begin=now"
        " --deadline=now+1day -H --priority=1 --nice=3 --requeue --share-id=proj --tag=k=v"
        " --mail-type=END --mail-user=u --secret A=s1"
    )
    merged = merge(ParsedOptions(), opts(*every_option))
    assert set(merged) == JOB_REQUEST_KEYS | EXTRA_KEYS


def test_secret_options_add_up_and_bad_ones_name_the_entry() -> None:
    merged = merge(
        ParsedOptions(), opts("--secret", "A=s1,B=s.2", "--secret", "C=s-3", "--secret=A=s4")
    )
    assert merged["secrets"] == {"A": "s4", "B": "s.2", "C": "s-3"}
    with pytest.raises(DirectiveError, match=r"'A=' is not VAR=SECRET_NAME"):
        opts("--secret", "A=")


def test_merge_does_not_change_its_inputs() -> None:
    a, b = opts("--mem-per-cpu=1G"), opts("-c", "2")
    merge(a, b)
    assert a.values == {"mem_per_cpu_mb": 1024}
    assert b.values == {"cpus_per_task": 2}


# --------------------------------------------------------------------------- split_submit_argv


@pytest.mark.parametrize(
    ("argv", "left", "right"),
    [
        (["job.sh"], [], ["job.sh"]),
        (["-c", "4", "job.sh", "-c", "1"], ["-c", "4"], ["job.sh", "-c", "1"]),
        (["-c4", "--mem", "4G", "job.sh"], ["-c4", "--mem", "4G"], ["job.sh"]),
        (["--mem=4G", "job.sh", "a"], ["--mem=4G"], ["job.sh", "a"]),
        (["--exclusive", "job.sh"], ["--exclusive"], ["job.sh"]),
        (["--requeue", "job.sh"], ["--requeue"], ["job.sh"]),
        (["-J", "x", "--", "-odd.sh", "a"], ["-J", "x"], ["-odd.sh", "a"]),
        (["-J", "x", "-"], ["-J", "x"], ["-"]),
        (["-J", "x"], ["-J", "x"], []),
        (["--unknown", "job.sh"], ["--unknown"], ["job.sh"]),
        (["-t", "--", "job.sh"], ["-t", "--"], ["job.sh"]),  # "--" taken as -t's value
        ([], [], []),
    ],
)
def test_split_submit_argv(argv: list[str], left: list[str], right: list[str]) -> None:
    assert split_submit_argv(argv) == (left, right)


def test_split_submit_argv_caller_options() -> None:
    argv = ["--wait", "--wait-timeout", "60", "-c", "2", "job.sh"]
    assert split_submit_argv(argv, flags={"--wait"}, valued={"--wait-timeout"}) == (
        argv[:5],
        ["job.sh"],
    )


# --------------------------------------------------------------------------- output patterns


def expand_pattern(pattern: str, **overrides: object) -> str:
    fields: dict[str, object] = {
        "job_id": 42,
        "array_job_id": None,
        "array_index": None,
        "job_name": "train",
        "node_name": "node1",
        "user": "alice",
    }
    fields.update(overrides)
    return expand_output_pattern(pattern, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "overrides", "expected"),
    [
        ("slurm-%j.out", {}, "slurm-42.out"),
        ("%x-%u-%N.log", {}, "train-alice-node1.log"),
        ("%A_%a.out", {}, "42_0.out"),
        ("%A_%a.out", {"job_id": 45, "array_job_id": 40, "array_index": 5}, "40_5.out"),
        ("%4j.out", {}, "0042.out"),
        ("%3a", {"array_index": 7, "array_job_id": 1}, "007"),
        ("%20j", {}, "0000000042"),  # at most 10 wide
        ("%5x", {}, "train"),  # padding only for numbers
        ("100%%", {}, "100%"),
        ("%q%", {}, "%q%"),
        ("a\\%j", {}, "a%j"),  # a backslash turns expansion off
        ("", {}, ""),
        ("%j", {"job_id": "abc"}, "abc"),
    ],
)
def test_expand_output_pattern(pattern: str, overrides: dict[str, object], expected: str) -> None:
    assert expand_pattern(pattern, **overrides) == expected


# --------------------------------------------------------------------------- fuzzing

_fragments = st.sampled_from(
    [
        "#!/bin/bash",
        "#SBATCH ",
        "#HPCBATCH ",
        "--mem=",
        "--time ",
        "-c",
        "-N ",
        "--gres=gpu:",
        "--export=",
        "--exclusive",
        "--nodes=1-2",
        "--mail-type=END",
        "--unknown",
        "'",
        '"',
        "\\",
        "#",
        "=",
        ":",
        ",",
        "-",
        "--",
        " ",
        "\t",
        "\n",
        "\r",
        "\r\n",
        "\0",
        "4G",
        "1-00:00:00",
        "9" * 30,
        "échec",
        "\u212a",
        "echo hi",
    ]
)
_hostile = st.lists(st.one_of(_fragments, st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=400)
@given(st.one_of(st.text(), _hostile))
def test_parse_script_only_raises_directive_error(text: str) -> None:
    try:
        opts, returned = parse_script(text, "fuzz.sh")
    except DirectiveError as exc:
        assert str(exc).startswith("fuzz.sh")
        return
    assert returned is text
    assert all(isinstance(w, str) for w in opts.warnings)
    with contextlib.suppress(DirectiveError):
        merge(opts, ParsedOptions())


@settings(max_examples=300)
@given(st.lists(st.one_of(_fragments, st.text(max_size=12)), max_size=8), st.booleans())
def test_parse_args_only_raises_directive_error(tokens: list[str], strict: bool) -> None:
    with contextlib.suppress(DirectiveError):
        parse_args(tokens, strict=strict)
    left, right = split_submit_argv(tokens)
    assert left + right == tokens or [*left, "--", *right] == tokens


# --------------------------------------------------------------------------- --signal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("USR1", {"name": "USR1", "before_s": 60, "batch_only": False}),
        ("B:USR1@120", {"name": "USR1", "before_s": 120, "batch_only": True}),
        ("SIGTERM@0", {"name": "TERM", "before_s": 0, "batch_only": False}),
        ("10@5", {"name": "USR1", "before_s": 5, "batch_only": False}),
        ("usr2@65535", {"name": "USR2", "before_s": 65535, "batch_only": False}),
    ],
)
def test_signal_option(value: str, expected: dict[str, object]) -> None:
    assert parse_args([f"--signal={value}"]).values == {"warn_signal": expected}


def test_signal_reservation_flag_is_a_warning() -> None:
    parsed = parse_args(["--signal=R:USR1@30"])
    assert parsed.values["warn_signal"] == {"name": "USR1", "before_s": 30, "batch_only": False}
    assert parsed.warnings and "R:" in parsed.warnings[0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NOPE", "'NOPE' is not a signal name"),
        ("USR1@-1", "is not a whole number"),
        ("USR1@70000", "is more than 65535"),
        ("X:USR1", "must be B (the batch shell only) or R"),
        ("999", "999 is not a signal number"),
    ],
)
def test_signal_option_errors(value: str, message: str) -> None:
    with pytest.raises(DirectiveError, match=re.escape(message)):
        parse_args([f"--signal={value}"])


def _merged(*argv: str) -> dict[str, object]:
    from hpcbatch.core.directives import merge, parse_args, parse_script

    return merge(parse_script("#!/bin/sh\n")[0], parse_args(list(argv)))


def test_slurm_gpu_relative_requests_and_mem_0() -> None:
    """--mem=0, --mem-per-gpu, --cpus-per-gpu and --gpus-per-task as Slurm reads them."""
    whole = _merged("--mem=0", "-c", "2")
    assert whole["exclusive"] is True and "memory_mb" not in whole
    per_gpu = _merged("--gpus-per-node=2", "--cpus-per-gpu=4", "--mem-per-gpu=8G")
    assert (per_gpu["gpus"], per_gpu["cpus"], per_gpu["memory_mb"]) == (2, 8, 16384)
    per_task = _merged("--ntasks-per-node=3", "--gpus-per-task=2")
    assert per_task["gpus"] == 6
    later = _merged("--mem=4G", "--gpus-per-node=1", "--mem-per-gpu=1G")
    assert later["memory_mb"] == 1024  # the later of --mem and --mem-per-gpu wins
    import pytest

    from hpcbatch.core.directives import DirectiveError

    with pytest.raises(DirectiveError, match="--cpus-per-gpu needs GPUs"):
        _merged("--cpus-per-gpu=4")


def test_tags_add_up_across_options_and_sources_later_values_winning() -> None:
    from_script, _ = parse_script(script("#SBATCH --tag project=a,stage=dev", "#SBATCH --tag x=1"))
    merged = merge(from_script, opts("--tag", "stage=prod", "--tag=y=2"))
    assert merged["tags"] == {"project": "a", "stage": "prod", "x": "1", "y": "2"}
    with pytest.raises(DirectiveError, match="expected KEY=VALUE"):
        opts("--tag", "novalue")
