"""The host agent: a stdlib-only program uploaded to each host over SSH.

It is several modules (the agent loop, the shepherd, the relay, the
hpcbatch-rsh and srun shims), shipped as one zipapp built on the controller's
side (transport/agent_archive.py). This package's own import is empty on
purpose: every process the agent starts imports it, and what it imported
(zipfile, importlib.resources) made each of them larger for nothing.
"""
