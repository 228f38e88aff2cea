"""The agent file on a host is checked by content before each start, not by name.

A job (in run_as = "login" mode it runs under the agent's own login) could
rewrite `agent-<hash>.pyz` and so run code in every later agent. The file's
name is its hash, but the controller hashes the content before each start
and puts its own copy back when they differ.
"""

from __future__ import annotations

import hashlib

from hpcbatch.sandbox import Sandbox
from hpcbatch.transport.link import HostLink, SshTarget, agent_digest, agent_source
from tests.integration.test_host_keys import FAST, Listener, first_outcome


async def test_a_rewritten_agent_file_is_replaced_before_the_start(sandbox: Sandbox) -> None:
    node1 = sandbox.host("node1")
    target = SshTarget(
        name="node1", address=node1.address, port=node1.port, user=sandbox.user,
        identity=str(sandbox.client_key), known_hosts=str(sandbox.known_hosts),
        ssh_config=None, work_dir=str(node1.work_dir), namespace="agent-file/node1",
    )  # fmt: skip
    source = agent_source()
    path = node1.work_dir / f"agent-{agent_digest(source)}.pyz"
    for round_ in range(2):
        if round_ == 1:  # what a job could do: the same name, other code
            path.write_bytes(b"import os\nos.system('touch /tmp/owned')\n")
        listener = Listener()
        link = HostLink(target, listener, settings=FAST)
        try:
            kind, hello = await first_outcome(link, listener)
            assert kind == "up", hello
        finally:
            await link.close()
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(source).digest()
