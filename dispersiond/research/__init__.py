"""Research code: the benchmarks and analyses behind BENCHMARKS.md and docs/SECURITY.md.

Kept apart from the daemon: only the `bench` and `analyze` commands import it, and it
imports no command (tests/test_layout.py holds both rules).
"""
