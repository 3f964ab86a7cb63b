"""Shared pytest configuration."""

# tests/typing holds files checked by mypy only (type tests), never run.
collect_ignore = ["typing"]
