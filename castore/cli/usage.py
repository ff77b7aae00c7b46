"""What the command line says of arguments its command does not take.

argparse says only ``unrecognized arguments: --by 3``; a user who gave an option
to the wrong command (``get --by``, ``list --version``) is told which commands
take it. The other commands' parsers are built only on this error path.
"""

from __future__ import annotations

from collections.abc import Sequence

from castore.cli.args import SPECS, command_parser

__all__ = ["unrecognized"]


def _takers(option: str) -> list[str]:
    """The commands with ``option`` (``--by``, ``--by=3``: the part before ``=``)."""
    name = option.partition("=")[0]
    return [cmd for cmd in SPECS if name in command_parser(cmd, cmd)._option_string_actions]


def _options(command: str) -> list[str]:
    """The long options ``castore COMMAND`` takes."""
    return [o for o in command_parser(command, command)._option_string_actions if o[:2] == "--"]


def unrecognized(command: str, extras: Sequence[str]) -> str:
    """The usage error for ``extras``, arguments ``castore COMMAND`` does not take.

    Each option among them is named with the commands that take it, if any, or
    with the command's options it begins (abbreviations are not taken).
    """
    notes = []
    for arg in extras:
        if not arg.startswith("-") or arg == "-":
            continue
        takers = _takers(arg)
        option = arg.partition("=")[0]
        if not takers:
            spelled = sorted(o for o in _options(command) if o.startswith(option))
            full = f" (options are spelled in full: {', '.join(spelled)})" if spelled else ""
            notes.append(f"no command takes {option}{full}")
            continue
        who = takers[0] if len(takers) == 1 else f"{', '.join(takers[:-1])} and {takers[-1]}"
        notes.append(f"{command} takes no {option} ({who} {'does' if len(takers) == 1 else 'do'})")
    told = f": {'; '.join(notes)}" if notes else ""
    return f"unrecognized arguments: {' '.join(extras)}{told}"
