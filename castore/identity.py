"""Who writes: the audit record every new version carries.

The audit fields come from the writing ``Store`` (``dag``, ``actor``,
``run_id``, ``step``), else from Dagu's environment variables (``DAG_NAME``,
``DAG_RUN_ID``, ``DAG_RUN_STEP_NAME``, ``DAG_RUN_ATTEMPT_ID``) and
``CASTORE_ACTOR``, plus the user, host and pid of the writing process
(docs/DESIGN.md, "Decisions where the issue was silent").
"""

from __future__ import annotations

import os

from castore.errors import InvalidValueError
from castore.keys import env_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from castore.records import Audit

__all__ = [
    "ENVIRONMENT",
    "MAX_AUDIT_TEXT",
    "ProcessIdentity",
    "audit_fields",
    "check_audit",
    "check_caller",
    "environment",
    "out_of_range",
    "refuse_invalid_text",
]

ENVIRONMENT = ("DAG_NAME", "DAG_RUN_ID", "DAG_RUN_STEP_NAME", "DAG_RUN_ATTEMPT_ID", "CASTORE_ACTOR")
_RAW_NAMES = tuple(os.fsencode(name) for name in ENVIRONMENT)


def environment() -> tuple[str, ...]:
    """The values of :data:`ENVIRONMENT` now ("" when unset), each the UTF-8 text of its bytes.

    As :func:`castore.keys.env_text` reads them (not in the locale's encoding,
    which would record ``dÃ©`` for a DAG ``dé`` in an ISO-8859-1 locale).
    """
    data = getattr(os.environ, "_data", None)  # POSIX CPython: the encoded mapping itself
    if os.name != "posix" or not isinstance(data, dict):
        return tuple(env_text(name) for name in ENVIRONMENT)
    return tuple(
        data[raw].decode("utf-8", "surrogateescape") if raw in data else "" for raw in _RAW_NAMES
    )


class ProcessIdentity:
    """The pid, user and host of the current process, looked up once per process.

    A forked child looks them up again (its pid differs).
    """

    def __init__(self) -> None:
        self._cached: tuple[int, str, str] | None = None

    def current(self) -> tuple[int, str, str]:
        """``(pid, user, host)``; a user without a name is its uid in decimal.

        As ``ls -l`` and ``ps`` show one: a container's ``--user 1000`` often has no
        password database entry and no ``$LOGNAME`` or ``$USER`` (the record's user
        was empty before the thirty-ninth session).
        """
        pid = os.getpid()
        if self._cached is None or self._cached[0] != pid:
            import getpass  # on the first write only: a CLI get never loads it

            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = str(os.getuid())
            # The host name as socket.gethostname() gives it (POSIX gethostname(2) is
            # uname's nodename), without importing socket (CLI start-up).
            self._cached = (pid, _utf8_text(user), _utf8_text(os.uname().nodename))
        return self._cached


def _utf8_text(name: str) -> str:
    """A name Python decoded with the locale's encoding, as the UTF-8 text of its bytes.

    ``$LOGNAME``/``$USER`` (or the password database) and the host name, as the
    environment's names are read (:func:`environment`): in the C locale a user
    ``josé`` was lone surrogates, and every write was refused; in an ISO-8859-1
    locale it was recorded as ``josÃ©``. Bytes that are not UTF-8 stay lone
    surrogates, which :func:`refuse_invalid_text` refuses.
    """
    if name.isascii():
        return name
    try:
        return os.fsencode(name).decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # not bytes the locale decoded: text as given
        return name


def audit_fields(
    identity: ProcessIdentity,
    actor: str | None,
    run_id: str | None,
    step: str | None,
    reason: str = "",
    rollback_from: int = 0,
    dag: str | None = None,
    *,
    seen: tuple[tuple[str, ...], tuple[int, str, str]] | None = None,
) -> dict[str, str | int]:
    """The fields of the audit record of a write made now by this process.

    In :class:`~castore.records.Audit`'s order, empty ones included (the CLI's
    quick ``set`` writes them without loading msgspec: :mod:`castore.file.quickset`).
    The environment is read on every call (a long-running process may change
    it between writes), straight from ``os.environ``'s encoded mapping.

    Args:
        identity: the process's pid, user and host.
        actor: who writes; None means ``$CASTORE_ACTOR``.
        run_id: the run id; None means ``$DAG_RUN_ID``.
        step: the step name; None means ``$DAG_RUN_STEP_NAME``.
        reason: free text.
        rollback_from: the version a rollback restores (0: not a rollback).
        dag: the DAG name the store was given (``--dag``); None means ``$DAG_NAME``.
        seen: :func:`environment` and ``identity.current()`` as the caller read them
            (it keys records by them: another thread may change the environment).
    """
    env, me = seen if seen is not None else (environment(), identity.current())
    pid, user, host = me
    dag_name, env_run_id, env_step, attempt, env_actor = env
    return {
        "dag_name": dag if dag is not None else dag_name,
        "run_id": run_id if run_id is not None else env_run_id,
        "step_name": step if step is not None else env_step,
        "attempt": attempt,
        "user": user,
        "host": host,
        "pid": pid,
        "actor": actor if actor is not None else env_actor,
        "reason": reason,
        "rollback_from": rollback_from,
    }


_SOURCES = {"dag_name": "$DAG_NAME", "run_id": "$DAG_RUN_ID", "step_name": "$DAG_RUN_STEP_NAME"}
_SOURCES |= {"attempt": "$DAG_RUN_ATTEMPT_ID", "actor": "$CASTORE_ACTOR"}
# getpass.getuser()'s sources, in its order (given only by a caller: Store.for_caller)
_SOURCES["user"] = "$LOGNAME, else $USER, $LNAME or $USERNAME, else the password database,"


MAX_AUDIT_TEXT = 8_192  # characters; JSON-escaped, 11 fields stay under 600 KiB


def refuse_invalid_text(fields: dict[str, str | int], *, sources: bool = True) -> None:
    """Refuse an audit field that is not Unicode text UTF-8 can hold, or is too long.

    A lone surrogate comes from an environment variable holding bytes that are not
    UTF-8 (Python decodes them as lone surrogates), or from a caller's string; the
    record could not be written, so the write fails before anything is. A field is
    at most :data:`MAX_AUDIT_TEXT` characters, so that every version's export line
    fits the limit an import reads (docs/CLI.md, export).

    Raises:
        InvalidValueError: names the field (and, with ``sources``, the variable it may
            come from: a new write's; an imported record's comes from its file).
    """
    for name, text in fields.items():
        if type(text) is not str or (len(text) <= MAX_AUDIT_TEXT and _utf8(text)):
            continue
        if len(text) > MAX_AUDIT_TEXT:
            problem = f"holds {len(text)} characters, more than {MAX_AUDIT_TEXT}"
        else:
            problem = "is not valid text: it holds a lone surrogate (bytes that are not UTF-8)"
        where = f" (from {_SOURCES[name]} unless given)" if sources and name in _SOURCES else ""
        raise InvalidValueError(f"audit field {name}{where} {problem}; nothing was written")


def _utf8(text: str) -> bool:
    """Whether UTF-8 can hold ``text`` (no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_audit(audit: Audit, *, sources: bool = False) -> None:
    """An audit record given whole (an import's line, a worker's append), before it is written.

    ``sources``: a new write's record, whose fields may come from the environment.

    Raises:
        InvalidValueError: a ``pid`` or ``rollback_from`` outside 0 to 2**63-1, or a
            text field :func:`refuse_invalid_text` refuses.
    """
    if (problem := out_of_range(audit)) is not None:
        raise InvalidValueError(problem)
    fields = {name: getattr(audit, name) for name in audit.__struct_fields__}
    refuse_invalid_text(fields, sources=sources)


def out_of_range(audit: Audit) -> str | None:
    """What no castore ever wrote in an audit record: a number outside 0 to 2**63-1.

    (Longer text than :data:`MAX_AUDIT_TEXT` was written before that limit.)
    """
    for name in audit.__struct_fields__:
        value = getattr(audit, name)
        if type(value) is int and not 0 <= value < 1 << 63:
            return f"audit field {name} {value} is out of range (0 to 2**63-1)"
    return None


def check_caller(fields: dict[str, object]) -> None:
    """The fields of a caller's audit record (``Store.for_caller``), before any write uses them.

    Raises:
        TypeError: a field that is not a ``str`` (``pid`` and ``rollback_from``: an ``int``).
        InvalidValueError: a ``pid`` or ``rollback_from`` outside 0 to 2**63-1, or text
            that is not UTF-8 or too long (named as the caller's, not an environment
            variable's: a server's own ``$LOGNAME`` is not what was refused).
    """
    for name, value in fields.items():
        number = name in ("pid", "rollback_from")
        if type(value) is not (int if number else str):
            wanted = "an int" if number else "a str"
            raise TypeError(f"caller.{name} must be {wanted}, not {type(value).__name__}")
        if number and not 0 <= value < 1 << 63:  # type: ignore[operator]  # an int, just checked
            raise InvalidValueError(f"caller.{name} {value} is out of range")
    refuse_invalid_text(fields, sources=False)  # type: ignore[arg-type]  # given, not read
