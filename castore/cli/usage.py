"""What the command line says of arguments its command does not take.

argparse says only ``unrecognized arguments: --by 3``; a user who gave an option
to the wrong command (``get --by``, ``list --version``) is told which commands
take it. The other commands' parsers are built only on this error path.
"""

from __future__ import annotations

from collections.abc import Sequence

from castore.cli.args import SPECS, command_parser

__all__ = ["dash_hint", "unrecognized"]


def _takers(option: str) -> list[str]:
    """The commands with ``option`` (``--by``, ``--by=3``: the part before ``=``)."""
    name = option.partition("=")[0]
    return [cmd for cmd in SPECS if name in command_parser(cmd, cmd)._option_string_actions]


def _options(command: str) -> list[str]:
    """The long options ``castore COMMAND`` takes."""
    return [o for o in command_parser(command, command)._option_string_actions if o[:2] == "--"]


def _names(takers: list[str]) -> str:
    return takers[0] if len(takers) == 1 else f"{', '.join(takers[:-1])} and {takers[-1]}"


def _who(takers: list[str]) -> str:
    return f"{_names(takers)} {'does' if len(takers) == 1 else 'do'}"


def _note(option: str, command: str | None, own: Sequence[str]) -> str:
    """What to say of ``option`` given to ``command`` (None: before the command)."""
    takers = _takers(option)
    if takers and command is None:
        return f"{option} goes after its command ({_names(takers)})"
    if takers:
        return f"{command} takes no {option} ({_who(takers)})"
    spelled = sorted(o for o in own if o.startswith(option))
    if not spelled:  # the beginning of another command's option?
        spelled = sorted({o for cmd in SPECS for o in _options(cmd) if o.startswith(option)})
        spelled = [f"{o} of {_names(_takers(o))}" for o in spelled]
    full = f" (options are spelled in full: {'; '.join(spelled)})" if spelled else ""
    dash = f" ({_dash(command, option)})" if command and _dashed(option) and not full else ""
    return f"no command takes {option}{full}{dash}"


def _dash(command: str, arg: str) -> str:
    return f"a key or value that begins with '-' goes after --: castore {command} -- {arg}"


def _dashed(arg: str) -> bool:
    """``-k``: one dash, then not a number (``-5`` is a value argparse takes)."""
    return arg[:1] == "-" and arg[1:2] not in ("", "-") and not arg[1:].replace(".", "").isdigit()


def dash_hint(message: str, argv: Sequence[str]) -> str:
    """``message`` (a missing key or value), with a word on ``-k`` if one was given."""
    dashed = [a for a in argv if _dashed(a)]
    if not dashed or "arguments are required" not in message:
        return message
    command = next((a for a in argv if a in SPECS), "COMMAND")
    return f"{message} ({dashed[0]} is no option; {_dash(command, dashed[0])})"


def unrecognized(command: str | None, extras: Sequence[str], own: Sequence[str] = ()) -> str:
    """The usage error for ``extras``, arguments ``castore COMMAND`` does not take.

    Each option among them is named with the commands that take it, if any, or
    with the options it begins (abbreviations are not taken): the command's,
    else any command's. ``command`` None: ``extras`` came before the command,
    where ``own`` (the global options) are taken.
    """
    own = own if command is None else _options(command)
    options = [a.partition("=")[0] for a in extras if a.startswith("-") and a != "-"]
    notes = [_note(option, command, own) for option in options]
    told = f": {'; '.join(notes)}" if notes else ""
    return f"unrecognized arguments: {' '.join(extras)}{told}"
