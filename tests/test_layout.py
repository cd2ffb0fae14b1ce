"""Import rules between the package's parts, read from the source with `ast`.

The daemon and the core must run without the research code (benchmarks, analyses,
plots), and library code must not depend on the CLI: only cli.py and the commands
import dispersiond.commands, and only the `bench` and `analyze` commands import the
research package. And the state package is the only one that speaks SQL.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dispersiond"
RESEARCH_USERS = {"commands/bench.py", "commands/analyze.py"}


def _module_name(rel: Path) -> str:
    parts = ["dispersiond", *rel.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(package: list[str], level: int, module: str | None) -> str:
    base = package[: len(package) - level + 1] if level else []
    return ".".join(base + ([module] if module else []))


def _dynamic_target(call: ast.Call) -> str | None:
    """The constant head of `import_module(...)`'s name: `f".commands.{name}"` gives
    ".commands", so a dynamic import is held to the same rules."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".")
    return None


def _imports(path: Path) -> set[str]:
    """Every module a file imports, absolute, at any depth (lazy and importlib imports
    count too); `from X import y` yields both X and X.y, since y may be a submodule."""
    rel = path.relative_to(PACKAGE)
    package = _module_name(rel).split(".")
    if rel.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(package, node.level, node.module)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and (target := _dynamic_target(node)):
            level = len(target) - len(target.lstrip("."))
            found.add(_resolve(package, level, target.lstrip(".") or None))
    return found


def _modules() -> dict[str, set[str]]:
    return {p.relative_to(PACKAGE).as_posix(): _imports(p)
            for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_import_reader_sees_relative_and_lazy_imports():
    mods = _modules()
    assert "dispersiond.research.codec_bench" in mods["commands/bench.py"]  # lazy, relative
    assert "dispersiond.codec.split" in mods["research/key_leak.py"]  # two dots
    assert "dispersiond.commands" in mods["cli.py"]  # importlib.import_module(f".commands.{name}")
    assert len(mods) > 40


def test_only_the_bench_and_analyze_commands_import_research():
    offenders = {f: sorted(n for n in names if _within(n, "dispersiond.research"))
                 for f, names in _modules().items()
                 if not f.startswith("research/") and f not in RESEARCH_USERS}
    assert {f: n for f, n in offenders.items() if n} == {}


def test_nothing_but_the_cli_imports_the_commands():
    offenders = {f: sorted(n for n in names if _within(n, "dispersiond.commands"))
                 for f, names in _modules().items()
                 if f != "cli.py" and not f.startswith("commands/")}
    assert {f: n for f, n in offenders.items() if n} == {}


def test_research_needs_no_command():
    mods = _modules()
    research = [f for f in mods if f.startswith("research/")]
    assert "research/pipeline_bench.py" in research
    assert {f: sorted(n for n in mods[f] if _within(n, "dispersiond.commands"))
            for f in research if any(_within(n, "dispersiond.commands") for n in mods[f])} == {}



#: Statement shapes, not words: a docstring that says "update" or "select" is not SQL.
SQL = re.compile(r"^\s*(SELECT\b.*\bFROM\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|"
                 r"DELETE\s+FROM\b|CREATE\s+(TEMP\s+)?(TABLE|INDEX|TRIGGER)\b|ALTER\s+TABLE\b|"
                 r"PRAGMA\s+\w+)", re.IGNORECASE | re.DOTALL)


def _sql_strings(path: Path) -> list[tuple[int, str]]:
    """String constants (f-string parts included) shaped like SQL, with their lines."""
    return [(node.lineno, node.value[:60])
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and SQL.match(node.value)]


def test_no_sql_outside_the_state_package():
    """The state package owns the database: every statement is one of its methods."""
    offenders = [f"{p.relative_to(PACKAGE)}:{line}: {text!r}"
                 for p in sorted(PACKAGE.rglob("*.py"))
                 if p.relative_to(PACKAGE).parts[0] != "state"
                 for line, text in _sql_strings(p)]
    assert offenders == []


def test_the_sql_finder_finds_sql():
    """The check above can fail: it sees the state package's own statements, and a
    statement written anywhere else."""
    assert len(_sql_strings(PACKAGE / "state" / "files.py")) >= 3
    assert SQL.match("SELECT COUNT(*) FROM files WHERE state='done'")
    assert SQL.match("INSERT OR REPLACE INTO meta VALUES ('manifest_dirty', '1')")
    assert not SQL.match("Update the manifest, then select the next file from the inbox")
