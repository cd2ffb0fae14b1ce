"""`main` builds only the part of the command line the command named needs: the same
answer as the whole parser for every command, and the whole parser whenever the
command cannot be told for sure (help, a typo, a command registered by another one)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispersiond import cli


def every_command() -> list[str]:
    return sorted(cli._commands(cli.build_parser()))


@pytest.mark.parametrize("name", every_command())
def test_each_command_alone_parses_as_in_the_whole_parser(name):
    module = cli.command_of([name])
    if module is None:  # registered by another command's module: the whole parser
        assert name.replace("-", "_") not in cli.COMMANDS
        return
    alone = cli.build_parser(module)
    assert cli._commands(alone) >= {name}
    argv = ["-c", "x.yaml", name]
    whole = cli.build_parser()
    try:
        want = vars(whole.parse_args(argv))
    except SystemExit:  # the command needs more arguments: both parsers refuse it
        with pytest.raises(SystemExit):
            alone.parse_args(argv)
        return
    assert vars(alone.parse_args(argv)) == want


@pytest.mark.parametrize("argv, module", [
    (["restore", "abc"], "restore"),
    (["-c", "restore", "put", "f"], "put"),  # a config file named like a command
    (["--config", "ls", "-v", "restore"], "restore"),
    (["--conf", "ls", "restore"], "restore"),  # an abbreviated option still takes its value
    (["-vc", "ls", "put"], "put"),
    (["--config=ls", "put"], "put"),
    (["--log-format", "json", "rotate-key"], "rotate_key"),
    (["rotate_key"], None),  # not how the command is spelled: the whole parser says so
    (["--help"], None),
    (["--version"], None),
    ([], None),
    (["restor"], None),
])
def test_the_command_is_told_from_its_options(argv, module):
    assert cli.command_of(argv) == module


def test_a_command_another_one_registers_is_still_found(tmp_path, capsys):
    # `trust` comes from the identity module: main falls back to the whole parser
    assert cli.command_of(["trust"]) is None
    with pytest.raises(SystemExit) as exc:
        cli.main(["trust", "--help"])
    assert exc.value.code == 0 and "trust" in capsys.readouterr().out


def test_a_typo_gets_the_whole_list_of_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["restor"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and "restore" in err and "rotate-key" in err


_WORDS = st.sampled_from(every_command() + ["x.yaml", "-", "json", "restore", "--"])


@st.composite
def command_lines(draw):
    """Options before the command, the values of some of them named like commands."""
    before: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["-v", "-vv", "-c", "--config", "--conf", "--log-format",
                                     "-vc", "--config=", "-c="]))
        value = draw(_WORDS)
        before += [kind + value] if kind.endswith("=") else [kind] if kind.startswith("-v") \
            and kind != "-vc" else [kind, value]
    name = draw(st.sampled_from(every_command()))
    return before, name, draw(st.lists(_WORDS, max_size=3))


@settings(max_examples=200, deadline=None)
@given(command_lines())
def test_the_command_is_found_behind_any_options(line):
    before, name, after = line
    module = name.replace("-", "_")
    want = module if module in cli.COMMANDS else None
    assert cli.command_of(before + [name] + after) == want
