"""Shared pytest settings: nothing here starts a process; see tests/integration."""
