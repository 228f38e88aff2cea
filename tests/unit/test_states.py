"""Tests for hpcbatch.core.states (the transition table) and hpcbatch.core.jobenv."""

from __future__ import annotations

import dataclasses
from collections import deque
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.core.jobenv import MASTER_PORT_BASE, NodeContext, job_environment
from hpcbatch.core.states import (
    FINAL_STATES,
    TRANSITIONS,
    AdminState,
    HostState,
    IllegalTransition,
    JobState,
    check_transition,
)

# --------------------------------------------------------------------------- states


def reachable(start: JobState) -> set[JobState]:
    seen = {start}
    todo = deque([start])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for targets in TRANSITIONS.values():
        assert targets <= set(JobState)


def test_final_states() -> None:
    assert {JobState.SUCCEEDED, JobState.FAILED} == FINAL_STATES
    for state in JobState:
        assert state.is_final == (state in FINAL_STATES)


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_final_states_only_go_back_to_the_queue(state: JobState) -> None:
    # `hpcbatch requeue` of a finished job (PENDING: requeue --hold); nothing else.
    assert TRANSITIONS[state] == {JobState.RUNNABLE, JobState.PENDING}
    for new in set(JobState) - TRANSITIONS[state]:
        with pytest.raises(IllegalTransition):
            check_transition(state, new)


@pytest.mark.parametrize("state", [s for s in JobState if not s.is_final])
def test_every_non_final_state_can_reach_failed(state: JobState) -> None:
    assert JobState.FAILED in reachable(state)
    # Cancel and host failure may strike anywhere: FAILED is one step away.
    assert JobState.FAILED in TRANSITIONS[state]


@pytest.mark.parametrize("state", [s for s in JobState if not s.is_final])
def test_non_final_states_have_exits(state: JobState) -> None:
    assert TRANSITIONS[state]


def test_every_state_is_reachable_from_submitted() -> None:
    assert reachable(JobState.SUBMITTED) == set(JobState)


def test_no_self_transitions() -> None:
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def test_nothing_goes_back_to_submitted_or_pending() -> None:
    for state in JobState:
        assert JobState.SUBMITTED not in TRANSITIONS[state]
        # -> PENDING: a hold (`hpcbatch hold`, from RUNNABLE) or a requeue with a hold
        # (`requeue --hold`, from a started or finished job); never PENDING to itself.
        assert JobState.PENDING not in TRANSITIONS[JobState.PENDING]


def test_retry_and_requeue_go_back_to_runnable() -> None:
    assert JobState.RUNNABLE in TRANSITIONS[JobState.STARTING]
    assert JobState.RUNNABLE in TRANSITIONS[JobState.RUNNING]


@pytest.mark.parametrize(("old", "new"), list(product(JobState, JobState)))
def test_check_transition_follows_the_table(old: JobState, new: JobState) -> None:
    if new in TRANSITIONS[old]:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_transition(old, new)
        assert str(old) in str(info.value)
        assert str(new) in str(info.value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (JobState.RUNNING, JobState.SUBMITTED),
        (JobState.SUCCEEDED, JobState.FAILED),
        (JobState.FAILED, JobState.RUNNING),
        (JobState.SUBMITTED, JobState.RUNNING),
        (JobState.PENDING, JobState.STARTING),
        (JobState.RUNNABLE, JobState.SUCCEEDED),
    ],
)
def test_illegal_transitions(old: JobState, new: JobState) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_illegal_transition_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot become"):
        check_transition(JobState.FAILED, JobState.SUCCEEDED)


def test_active_states() -> None:
    assert {s for s in JobState if s.is_active} == {JobState.STARTING, JobState.RUNNING}
    assert not any(s.is_active and s.is_final for s in JobState)


@pytest.mark.parametrize("enum", [JobState, HostState, AdminState])
def test_states_serialise_as_themselves(enum: type[JobState | HostState | AdminState]) -> None:
    for member in enum:
        assert member == member.name
        assert str(member) == member.name
        assert f"{member}" == member.name
        assert enum(member.name) is member


# --------------------------------------------------------------------------- jobenv


def ctx(**kw: object) -> NodeContext:
    base = NodeContext(
        job_id=1234,
        job_name="train",
        user="alice",
        queue="gpu",
        compute_env="ce-gpu",
        attempt=1,
        node_index=1,
        node_names=("node1", "node2", "node3", "node4"),
        node_addrs=("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"),
        main_node_index=0,
        cpus_on_node=16,
        gpus_on_node=(),
        host_has_gpus=False,
        submit_dir="/home/alice/run",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_slurm_nodelist_is_compressed() -> None:
    env = job_environment(ctx(), {})
    assert env["SLURM_JOB_NODELIST"] == "node[1-4]"
    assert env["SLURM_NODELIST"] == "node[1-4]"
    assert env["HPCBATCH_NODE_NAMES"] == "node1,node2,node3,node4"


def test_slurm_nodelist_mixed_names() -> None:
    env = job_environment(
        ctx(
            node_names=("a01", "a02", "gpu7"),
            node_addrs=("h1", "h2", "h3"),
            node_index=2,
        ),
        {},
    )
    assert env["SLURM_JOB_NODELIST"] == "a[01-02],gpu7"
    assert env["SLURMD_NODENAME"] == "gpu7"


def test_single_node_job() -> None:
    env = job_environment(ctx(node_names=("solo",), node_addrs=("10.1.1.1",), node_index=0), {})
    assert env["SLURM_JOB_NODELIST"] == "solo"
    assert env["HPCBATCH_NUM_NODES"] == env["AWS_BATCH_JOB_NUM_NODES"] == "1"
    assert env["MASTER_ADDR"] == "10.1.1.1"
    assert env["WORLD_SIZE"] == "1"


def test_hpcbatch_aws_and_slurm_names() -> None:
    env = job_environment(ctx(), {})
    expected = {
        "HPCBATCH_JOB_ID": "1234",
        "HPCBATCH_JOB_NAME": "train",
        "HPCBATCH_NODE_INDEX": "1",
        "HPCBATCH_NUM_NODES": "4",
        "HPCBATCH_MAIN_NODE_INDEX": "0",
        "HPCBATCH_MAIN_NODE_ADDR": "10.0.0.1",
        "HPCBATCH_NODE_ADDRS": "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4",
        "HPCBATCH_ATTEMPT": "1",
        "HPCBATCH_QUEUE": "gpu",
        "HPCBATCH_SUBMIT_DIR": "/home/alice/run",
        "AWS_BATCH_JOB_ID": "1234",
        "AWS_BATCH_JOB_NODE_INDEX": "1",
        "AWS_BATCH_JOB_NUM_NODES": "4",
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.0.1",
        "AWS_BATCH_JOB_ATTEMPT": "1",
        "AWS_BATCH_JQ_NAME": "gpu",
        "AWS_BATCH_CE_NAME": "ce-gpu",
        "SLURM_JOB_ID": "1234",
        "SLURM_JOBID": "1234",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_USER": "alice",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NNODES": "4",
        "SLURM_NODEID": "1",
        "SLURMD_NODENAME": "node2",
        "SLURM_CPUS_ON_NODE": "16",
        "SLURM_JOB_CPUS_PER_NODE": "16",
        "SLURM_JOB_PARTITION": "gpu",
        "SLURM_RESTART_COUNT": "0",
        "SLURM_SUBMIT_DIR": "/home/alice/run",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": str(MASTER_PORT_BASE + 234),
        "WORLD_SIZE": "4",
        "NODE_RANK": "1",
    }
    assert {k: env.get(k) for k in expected} == expected


def test_main_node_elsewhere() -> None:
    env = job_environment(ctx(main_node_index=2), {})
    assert env["MASTER_ADDR"] == env["HPCBATCH_MAIN_NODE_ADDR"] == "10.0.0.3"
    assert env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] == "10.0.0.3"
    assert env["AWS_BATCH_JOB_MAIN_NODE_INDEX"] == "2"


def test_retry_counts() -> None:
    env = job_environment(ctx(attempt=3), {})
    assert env["HPCBATCH_ATTEMPT"] == env["AWS_BATCH_JOB_ATTEMPT"] == "3"
    assert env["SLURM_RESTART_COUNT"] == "2"


def test_optional_names_absent_when_unset() -> None:
    env = job_environment(ctx(submit_dir=None), {})
    for name in (
        "SLURM_SUBMIT_DIR",
        "HPCBATCH_SUBMIT_DIR",
        "HPCBATCH_TIME_LIMIT",
        "HPCBATCH_ARRAY_INDEX",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
    ):
        assert name not in env


def test_time_limit_and_array() -> None:
    env = job_environment(ctx(time_limit_s=600, array_job_id=1200, array_index=0), {})
    assert env["HPCBATCH_TIME_LIMIT"] == "600"
    assert env["HPCBATCH_ARRAY_INDEX"] == env["AWS_BATCH_JOB_ARRAY_INDEX"] == "0"
    assert env["SLURM_ARRAY_JOB_ID"] == "1200"
    assert env["SLURM_ARRAY_TASK_ID"] == "0"


def test_user_env_is_kept() -> None:
    user = {"PATH": "/opt/bin:/usr/bin", "OMP_NUM_THREADS": "4", "EMPTY": ""}
    env = job_environment(ctx(), user)
    assert {k: env[k] for k in user} == user
    assert user == {"PATH": "/opt/bin:/usr/bin", "OMP_NUM_THREADS": "4", "EMPTY": ""}


def test_user_env_cannot_override_identity() -> None:
    user = {
        "HPCBATCH_JOB_ID": "1",
        "AWS_BATCH_JOB_ID": "1",
        "SLURM_JOB_ID": "1",
        "SLURM_JOB_USER": "root",
        "HPCBATCH_NODE_INDEX": "0",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    }
    env = job_environment(ctx(host_has_gpus=True, gpus_on_node=(3,)), user)
    assert env["HPCBATCH_JOB_ID"] == "1234"
    assert env["AWS_BATCH_JOB_ID"] == "1234"
    assert env["SLURM_JOB_ID"] == "1234"
    assert env["SLURM_JOB_USER"] == "alice"
    assert env["HPCBATCH_NODE_INDEX"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


def test_gpus_allocated() -> None:
    env = job_environment(ctx(host_has_gpus=True, gpus_on_node=(0, 2)), {})
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "0,2"
    assert env["SLURM_JOB_GPUS"] == "0,2"
    assert env["GPU_DEVICE_ORDINAL"] == "0,2"
    assert env["HPCBATCH_GPUS_PER_NODE"] == "2"


def test_gpu_host_but_no_gpus_allocated_hides_them_all() -> None:
    env = job_environment(ctx(host_has_gpus=True, gpus_on_node=()), {})
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["HPCBATCH_GPUS_PER_NODE"] == "0"


def test_no_gpu_names_on_a_host_without_gpus() -> None:
    env = job_environment(ctx(host_has_gpus=False, gpus_on_node=()), {})
    for name in (
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "SLURM_JOB_GPUS",
        "GPU_DEVICE_ORDINAL",
    ):
        assert name not in env
    assert env["HPCBATCH_GPUS_PER_NODE"] == "0"


_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


@given(
    user=st.dictionaries(
        _names | st.sampled_from(sorted(job_environment(ctx(host_has_gpus=True), {}))),
        st.text(max_size=20),
        max_size=20,
    ),
    gpus=st.lists(st.integers(0, 15), unique=True, max_size=4).map(tuple),
    host_has_gpus=st.booleans(),
)
def test_ours_always_win_and_all_values_are_strings(
    user: dict[str, str], gpus: tuple[int, ...], host_has_gpus: bool
) -> None:
    c = ctx(gpus_on_node=gpus, host_has_gpus=host_has_gpus or bool(gpus))
    ours = job_environment(c, {})
    env = job_environment(c, user)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    for key, value in ours.items():
        assert env[key] == value
    for key, value in user.items():
        if key not in ours:
            assert env[key] == value
    assert set(env) == set(ours) | set(user)
