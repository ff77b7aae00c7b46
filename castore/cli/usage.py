"""What the command line says of arguments its command does not take.

argparse says only ``unrecognized arguments: --by 3``; a user who gave an option
to the wrong command (``get --by``, ``list --version``) is told which commands
take it. The other commands' parsers are built only on this error path.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Sequence

from castore.cli.args import SPECS, command_parser

__all__ = ["close_command", "dash_hint", "unrecognized"]

_CHOICE = ": invalid choice: "


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
    if not full and option[:2] == "--":
        full = _misspelt(option, command, own)
    dash = f" ({_dash(command, option)})" if command and _dashed(option) and not full else ""
    return f"no command takes {option}{full}{dash}"


def _close(word: str, choices: Sequence[str], cutoff: float = 0.8) -> str | None:
    """The one of ``choices`` that ``word`` is a typo of (``_`` for ``-`` included), if any."""
    found = difflib.get_close_matches(word.replace("_", "-"), choices, n=1, cutoff=cutoff)
    return found[0] if found else None


def _misspelt(option: str, command: str | None, own: Sequence[str]) -> str:
    """`` (did you mean --required?)`` for ``--requierd``: the command's own, else any."""
    meant = _close(option, own)
    if meant is None:
        meant = _close(option, sorted({o for cmd in SPECS for o in _options(cmd)}))
        if meant is None:
            return ""
        if command is not None or meant not in own:
            meant = f"{meant} of {_names(_takers(meant))}"
    return f" (did you mean {meant}?)"


def close_command(message: str) -> str:
    """The message ``invalid choice: 'gte' (choose from …)``, with the command meant, if any."""
    head, _, rest = message.partition(_CHOICE)
    quoted = rest.partition(" (choose from ")[0] if head == "argument COMMAND" else ""
    try:
        given = ast.literal_eval(quoted) if quoted else None
    except (SyntaxError, ValueError):  # argparse worded it otherwise
        given = None
    begun = [name for name in SPECS if isinstance(given, str) and name.startswith(given)]
    # a command is a short word: one letter swapped in three ("gte") is a ratio of 2/3
    meant = _close(given, list(SPECS), 0.6) if isinstance(given, str) else None
    meant = begun[0] if len(begun) == 1 else meant  # "hist": history, not list
    if meant is None:
        return message
    return f"{head}{_CHOICE}{quoted}: did you mean {meant!r}?{rest[len(quoted) :]}"


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


def unrecognized(
    command: str | None, extras: Sequence[str], own: Sequence[str] = (), after: int = 0
) -> str:
    """The usage error for ``extras``, arguments ``castore COMMAND`` does not take.

    Each option among them is named with the commands that take it, if any, or
    with the options it begins (abbreviations are not taken): the command's,
    else any command's. ``command`` None: ``extras`` came before the command,
    where ``own`` (the global options) are taken. The last ``after`` of them came
    after ``--``, where nothing is an option: said so, not named as options.
    """
    own = own if command is None else _options(command)
    given = extras[: len(extras) - after]
    options = [a.partition("=")[0] for a in given if a.startswith("-") and a != "-"]
    notes = [_note(option, command, own) for option in options]
    if after:
        notes.append(
            f"{' '.join(extras[len(given) :])} came after --, where nothing is an option"
            " (options go before --)"
        )
    told = f": {'; '.join(notes)}" if notes else ""
    return f"unrecognized arguments: {' '.join(extras)}{told}"
