"""The hosts' half of the leader fence: an agent refuses an older controller's epoch.

Two links to one real sshd host, as two controllers (an old leader, paused
and resumed, and the new one) would hold: each runs its own agent process on
the same agent root. Once the new leader's `hello` has returned, every
launch, kill and ack of the old one's is refused with `stale_epoch` and does
nothing on the host, the old link reports it (a controller exits on it), and
an agent started afresh still refuses it: the epoch is kept on the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.sandbox import Sandbox
from hpcbatch.transport.link import AgentError, Fencing, HostLink, SshTarget
from tests.integration.test_host_keys import FAST, Listener, first_outcome

pytestmark = [pytest.mark.sshd, pytest.mark.timeout(120)]


def node1(sandbox: Sandbox, namespace: str) -> SshTarget:
    host = sandbox.host("node1")
    return SshTarget(
        name="node1", address=host.address, port=host.port, user=sandbox.user,
        identity=str(sandbox.client_key), known_hosts=str(sandbox.known_hosts),
        ssh_config=None, work_dir=str(host.work_dir), namespace=namespace,
    )  # fmt: skip


class Leader:
    """One controller's side: its epoch, and the refusals it was told of."""

    def __init__(self, sandbox: Sandbox, namespace: str, epoch: int) -> None:
        self.stale: list[str] = []
        self.fencing = Fencing(epoch=epoch, on_stale=self.stale.append)
        self.listener = Listener()
        self.link = HostLink(
            node1(sandbox, namespace), self.listener, settings=FAST, fencing=self.fencing
        )

    async def up(self) -> None:
        kind, what = await first_outcome(self.link, self.listener)
        assert kind == "up", what


async def test_an_old_leader_can_neither_launch_kill_nor_ack_once_a_new_one_spoke(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    namespace = f"epoch-{tmp_path.name}"
    root = sandbox.host("node1").work_dir / namespace
    old, new = Leader(sandbox, namespace, 5), Leader(sandbox, namespace, 9)
    try:
        await old.up()
        await old.link.request("launch", attempt="j1.1.n", script="sleep 30")
        assert (root / "epoch").read_text().strip() == "5"

        await new.up()  # the new leader's hello: the host has seen epoch 9 from here on
        assert (root / "epoch").read_text().strip() == "9"
        for op, fields in (
            ("launch", {"attempt": "j2.1.n", "script": "touch ran"}),
            ("kill", {"attempt": "j1.1.n", "reason": "old leader"}),
            ("ack", {"attempts": ["j1.1.n"]}),
        ):
            with pytest.raises(AgentError) as refused:
                await old.link.request(op, **fields)
            assert refused.value.code == "stale_epoch", refused.value
            assert "stale controller epoch 5" in refused.value.message
        assert len(old.stale) == 3 and "has seen 9" in old.stale[0], old.stale
        assert not (root / "attempts" / "j2.1.n").exists()  # launched nothing
        assert not (root / "attempts" / "j1.1.n" / "kill").exists()  # killed nothing

        hello = await new.link.request("hello")  # the job runs on, the new leader sees it
        assert [(a["attempt"], a["state"]) for a in hello["attempts"]] == [("j1.1.n", "running")]
        assert (await new.link.request("kill", attempt="j1.1.n", reason="done"))["found"]
        assert not new.stale
    finally:
        await old.link.close()

    # A fresh agent for the old leader (its link reconnects): refused at hello.
    again = Leader(sandbox, namespace, 5)
    try:
        kind, reason = await first_outcome(again.link, again.listener)
        assert kind == "down" and "stale controller epoch 5" in reason, reason
        assert again.stale and "hello" in again.stale[0]
    finally:
        await again.link.close()
        await new.link.close()
