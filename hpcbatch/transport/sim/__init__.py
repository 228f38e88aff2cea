"""Simulated hosts for scale tests: real SSH servers, a simulated agent, no processes.

`agent` speaks the host agent's protocol and "runs" jobs as timers; `server`
serves many hosts per process over asyncssh; `cluster` starts the processes
and writes the keys, known_hosts, ssh_config and inventory a controller uses.
The controller connects to these hosts exactly as to real ones.
"""
