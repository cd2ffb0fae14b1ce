"""`main` builds only the part of the command line the command named needs: the same
answer as the whole parser for every command, and the whole parser whenever the
command cannot be told for sure (help, a typo, a command registered by another one)."""
from __future__ import annotations

import pytest

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
