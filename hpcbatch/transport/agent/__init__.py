"""The host agent: a stdlib-only program uploaded to each host over SSH."""
