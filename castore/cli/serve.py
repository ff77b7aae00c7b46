"""``castore serve``: serve the store over HTTP/JSON until SIGTERM (docs/SERVER.md).

``--openapi`` prints the OpenAPI document instead (docs/openapi.json holds it).
Imported only when ``serve`` runs, so no other command loads the server stack;
without it installed, ``serve`` exits 1 saying what to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Final

from castore.cli.errors import OptionError
from castore.cli.invocation import Command, Invocation
from castore.errors import BackendUnavailableError

__all__ = ["COMMANDS"]

_STACK: Final = ("uvicorn", "starlette", "prometheus_client")  # castore[server]


def _require_stack() -> None:
    """Raise BackendUnavailableError (exit 1, one line) when the server's packages are missing."""
    missing = [name for name in _STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailableError(
            f"castore serve needs {', '.join(missing)}: pip install 'castore[server]'"
        )


def _serve(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    _require_stack()
    from castore.server.openapi import openapi_json
    from castore.server.run import ServeError, run_server

    if a.openapi:
        yield openapi_json().encode("utf-8")
        return
    given = {
        "listen": a.listen,
        "request_timeout": a.request_timeout,
        "shutdown_timeout": a.shutdown_timeout,
        "cluster": a.cluster,
        "self_url": a.self_url,
        "processes": a.processes,
    }
    try:
        run_server(
            cmd.store,
            token_file=a.token_file,
            access_log=a.access_log,
            **{name: value for name, value in given.items() if value is not None},
        )
    except ServeError as exc:
        raise OptionError(str(exc)) from None


COMMANDS: Final[dict[str, Command]] = {"serve": _serve}
