"""A throwaway PostgreSQL server on loopback, for the test suite (CI and developers).

Run from the checkout root::

    export CASTORE_TEST_POSTGRES="$(python3 tools/pgserver.py start --dir /tmp/pg)"
    python3 -m pytest
    python3 tools/pgserver.py stop --dir /tmp/pg

``start`` finds the server binaries (``PATH``, then ``/usr/lib/postgresql/*/bin``,
highest version first; ``--install`` installs the ``postgresql`` package with apt
when they are missing), runs ``initdb`` into ``DIR/data`` with scram-sha-256
authentication and a superuser ``castore`` with a random password, starts the
server on a free port of 127.0.0.1 (and a Unix socket in ``DIR/sock`` unless that path
is too long for one: TCP only then; nothing here uses the socket), creates the
database ``castore_test`` and prints one line, its URL. ``DIR/url`` holds the same
URL and ``DIR/env`` a shell line exporting it as ``CASTORE_TEST_POSTGRES``; both
are readable only by their owner. ``restart`` stops the server abruptly (``-m
immediate``, as a crash would) and starts it again on the same port; ``stop`` shuts
it down and removes ``DIR``.

PostgreSQL refuses to run as root: when this runs as root, the server runs as an
unprivileged user (``--user``, default ``nobody``) that owns ``DIR/data``,
``DIR/sock`` and ``DIR/log``; ``DIR`` itself stays root's, mode 0711. Otherwise the
server runs as the current user. ``fsync`` stays on: crash tests need real
durability.

The functions :func:`start`, :func:`stop` and :func:`restart` do the same for
tests (``import tools.pgserver``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, NamedTuple

SUPERUSER: Final = "castore"
DATABASE: Final = "castore_test"
DEFAULT_USER: Final = "nobody"  # the server's user when this runs as root
SERVER_BINARIES: Final = ("initdb", "pg_ctl", "postgres", "createdb")
DEBIAN_ROOT: Final = pathlib.Path("/usr/lib/postgresql")
START_TIMEOUT_SECONDS: Final = 120
START_ATTEMPTS: Final = 5  # a free port may be taken between probing and binding it
UNIX_SOCKET_PATH_MAX: Final = 107  # sizeof(sun_path) - 1 on Linux
LOG_TAIL_LINES: Final = 30


class PgServerError(Exception):
    """Setting up, starting or stopping the server failed (message for a human)."""


class Server(NamedTuple):
    """A running server made by :func:`start`.

    Attributes:
        url: ``postgresql://castore:PASSWORD@127.0.0.1:PORT/castore_test``.
        directory: The directory holding ``data``, ``sock``, ``log``, ``url``, ``env``.
        port: The TCP port on 127.0.0.1.
        bin_dir: The directory of the PostgreSQL binaries that run it.
    """

    url: str
    directory: pathlib.Path
    port: int
    bin_dir: pathlib.Path


# -- binaries -----------------------------------------------------------------------------


def _complete(directory: pathlib.Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in SERVER_BINARIES)


def _version_key(directory: pathlib.Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` sorts by ``(15,)``; ``9.6`` by ``(9, 6)``."""
    parts = re.findall(r"\d+", directory.parent.name)
    return tuple(int(part) for part in parts)


def find_binaries() -> pathlib.Path | None:
    """The directory holding initdb, pg_ctl, postgres and createdb, if any.

    Returns:
        The directory of ``initdb`` found on ``PATH`` (symbolic links resolved) if it
        holds the others too, else the highest version's ``/usr/lib/postgresql/*/bin``
        that holds them all, else None.
    """
    initdb = shutil.which("initdb")
    if initdb is not None:
        directory = pathlib.Path(initdb).resolve().parent
        if _complete(directory):
            return directory
    candidates = [path for path in DEBIAN_ROOT.glob("*/bin") if _complete(path)]
    if not candidates:
        return None
    return max(candidates, key=_version_key)


def install_postgresql() -> None:
    """Installs the ``postgresql`` package with apt (non-interactive; output to stderr).

    Raises:
        PgServerError: apt-get is missing, or it failed.
    """
    if shutil.which("apt-get") is None:
        raise PgServerError("apt-get not found: install the PostgreSQL server binaries")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise PgServerError("installing postgresql needs root (or sudo)")
        prefix = ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    )
    for command in commands:
        done = subprocess.run(
            [*prefix, *command], env=env, stdout=sys.stderr, stderr=sys.stderr, check=False
        )
        if done.returncode != 0:
            raise PgServerError(f"{' '.join(command)} failed (exit code {done.returncode})")


def _binaries(install: bool) -> pathlib.Path:
    bin_dir = find_binaries()
    if bin_dir is None and install:
        install_postgresql()
        bin_dir = find_binaries()
    if bin_dir is None:
        raise PgServerError(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found:"
            " pass --install, or install postgresql (apt-get install postgresql)"
        )
    return bin_dir


# -- running as the server's user -----------------------------------------------------------


class _RunAs(NamedTuple):
    """Who runs initdb, pg_ctl and postgres: a uid/gid when dropping root, else None."""

    uid: int | None
    gid: int | None
    name: str


def _current_user() -> _RunAs:
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    return _RunAs(None, None, name)


def _run_as_named(user: str) -> _RunAs:
    if os.geteuid() != 0:
        return _current_user()
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PgServerError(f"no user {user!r} to run PostgreSQL as (it refuses root)") from None
    if entry.pw_uid == 0:
        raise PgServerError(f"user {user!r} is root: PostgreSQL refuses to run as root")
    return _RunAs(entry.pw_uid, entry.pw_gid, user)


def _run_as_owner(data: pathlib.Path) -> _RunAs:
    """The user that owns an existing data directory (when this runs as root)."""
    if os.geteuid() != 0:
        return _current_user()
    info = data.stat()
    try:
        name = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        name = str(info.st_uid)
    return _RunAs(info.st_uid, info.st_gid, name)


def _child_env() -> dict[str, str]:
    """The caller's environment without libpq's ``PG*`` variables, in the C locale."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(
    command: Sequence[str | os.PathLike[str]],
    run_as: _RunAs,
    cwd: pathlib.Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` as ``run_as``, output captured (never shown unless it fails)."""
    return subprocess.run(
        [os.fspath(part) for part in command],
        cwd=cwd,
        env=dict(env) if env is not None else _child_env(),
        user=run_as.uid,
        group=run_as.gid,
        extra_groups=[] if run_as.uid is not None else None,
        umask=0o077,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def _chown(path: pathlib.Path, run_as: _RunAs) -> None:
    if run_as.uid is not None and run_as.gid is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _check_searchable(directory: pathlib.Path, run_as: _RunAs) -> None:
    """Fails unless ``run_as`` can reach ``directory`` (every ancestor searchable)."""
    if run_as.uid is None:
        return
    for ancestor in [directory, *directory.parents]:
        info = ancestor.stat()
        if info.st_uid == run_as.uid:
            allowed = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid == run_as.gid:
            allowed = bool(info.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(info.st_mode & stat.S_IXOTH)
        if not allowed:
            raise PgServerError(
                f"user {run_as.name} cannot enter {ancestor}: choose a --dir under /tmp"
            )


# -- the directory ------------------------------------------------------------------------


def _layout(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """``(data, sock, log)`` of a server directory."""
    return directory / "data", directory / "sock", directory / "log"


def _write_private(path: pathlib.Path, text: str) -> None:
    """Writes a new file only its owner can read (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _conf_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _write_settings(data: pathlib.Path, sock: pathlib.Path, port: int, run_as: _RunAs) -> None:
    """``DATA/castore.conf``: loopback only, the port, the socket directory, sizes.

    No Unix socket where ``sock``'s would pass an ``AF_UNIX`` address's length (a
    long ``TMPDIR``): the server then listens on TCP only, which is all it is used by.
    """
    fits = len(str(sock / f".s.PGSQL.{port}")) <= UNIX_SOCKET_PATH_MAX
    settings = {
        "listen_addresses": _conf_string("127.0.0.1"),
        "port": str(port),
        "unix_socket_directories": _conf_string(str(sock) if fits else ""),
        "fsync": "on",  # crash tests need real durability
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "shared_buffers": "64MB",
        "max_connections": "200",
    }
    text = "".join(f"{name} = {value}\n" for name, value in settings.items())
    conf = data / "castore.conf"
    conf.write_text(text)
    _chown(conf, run_as)  # the server's to read, whatever the umask (077: root's alone)


def _log_tail(log: pathlib.Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _failure(what: str, done: subprocess.CompletedProcess[str], log: pathlib.Path) -> str:
    parts = [f"{what} failed (exit code {done.returncode})"]
    output = (done.stdout + done.stderr).strip()
    if output:
        parts.append(output)
    tail = _log_tail(log)
    if tail:
        parts.append(f"last lines of {log}:\n{tail}")
    return "\n".join(parts)


def _pg_ctl_start(bin_dir: pathlib.Path, directory: pathlib.Path, run_as: _RunAs) -> None:
    data, _, log = _layout(directory)
    done = _run(
        [
            bin_dir / "pg_ctl",
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "start",
        ],
        run_as,
        directory,
    )
    if done.returncode != 0:
        raise PgServerError(_failure("pg_ctl start", done, log))


def _running(bin_dir: pathlib.Path, directory: pathlib.Path, run_as: _RunAs) -> bool:
    data, _, _ = _layout(directory)
    done = _run([bin_dir / "pg_ctl", "-D", data, "status"], run_as, directory)
    return done.returncode == 0


def _pg_ctl_stop(bin_dir: pathlib.Path, directory: pathlib.Path, run_as: _RunAs, mode: str) -> None:
    """Stops the server in ``mode`` (``fast``, ``immediate``); nothing if not running."""
    data, _, log = _layout(directory)
    if not _running(bin_dir, directory, run_as):
        return
    done = _run(
        [bin_dir / "pg_ctl", "-D", data, "-m", mode, "-w", "stop"],
        run_as,
        directory,
    )
    if done.returncode != 0 and _running(bin_dir, directory, run_as):
        raise PgServerError(_failure(f"pg_ctl -m {mode} stop", done, log))


def _server_bin_dir(data: pathlib.Path) -> pathlib.Path:
    """The binaries that ran the server last (``postmaster.opts``), else any found."""
    with contextlib.suppress(OSError, ValueError):
        first = (data / "postmaster.opts").read_text().split('"')[1]
        bin_dir = pathlib.Path(first).parent
        if _complete(bin_dir):
            return bin_dir
    found = find_binaries()
    if found is None:
        raise PgServerError("PostgreSQL server binaries not found")
    return found


def _read_server(directory: pathlib.Path) -> Server:
    """The :class:`Server` of a directory made by :func:`start`."""
    data, _, _ = _layout(directory)
    try:
        url = (directory / "url").read_text().strip()
    except OSError as error:
        raise PgServerError(f"{directory} holds no server made by pgserver start") from error
    port = _port_of(url)
    return Server(url, directory, port, _server_bin_dir(data))


def _port_of(url: str) -> int:
    match = re.search(r"@127\.0\.0\.1:(\d+)/", url)
    if match is None:
        raise PgServerError("malformed url file")
    return int(match.group(1))


# -- the commands -------------------------------------------------------------------------


def start(
    directory: str | os.PathLike[str] | None = None,
    install: bool = False,
    user: str = DEFAULT_USER,
) -> Server:
    """Initializes and starts a server in ``directory``, with database ``castore_test``.

    Args:
        directory: Where the server lives (created if missing, else must be empty);
            None makes a new temporary directory.
        install: Install the ``postgresql`` package with apt if the binaries are missing.
        user: Who runs the server when this runs as root (ignored otherwise).

    Returns:
        The running server. On failure nothing is left running and ``directory`` is
        removed.

    Raises:
        PgServerError: The binaries are missing, or a step failed (its output and the
            server log's tail are in the message).
    """
    bin_dir = _binaries(install)
    run_as = _run_as_named(user)
    if directory is None:
        path = pathlib.Path(tempfile.mkdtemp(prefix="castore-pg-"))
    else:
        path = pathlib.Path(directory).absolute()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise PgServerError(f"{path} is not empty")
    try:
        return _start_in(path, bin_dir, run_as)
    except BaseException:
        _discard(path, bin_dir)
        raise


def _start_in(directory: pathlib.Path, bin_dir: pathlib.Path, run_as: _RunAs) -> Server:
    data, sock, log = _layout(directory)
    if run_as.uid is not None:
        directory.chmod(0o711)  # the server's user passes through; it lists nothing
    _check_searchable(directory, run_as)
    for owned in (data, sock):
        owned.mkdir(mode=0o700)
        _chown(owned, run_as)
    log.touch(mode=0o600)
    _chown(log, run_as)

    password = secrets.token_hex(24)  # URL- and shell-safe
    pwfile = directory / "pwfile"
    _write_private(pwfile, password + "\n")
    _chown(pwfile, run_as)
    try:
        done = _run(
            [
                bin_dir / "initdb",
                "-D",
                data,
                "--auth=scram-sha-256",
                f"--username={SUPERUSER}",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
            ],
            run_as,
            directory,
        )
    finally:
        pwfile.unlink()
    if done.returncode != 0:
        raise PgServerError(_failure("initdb", done, log))
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\ninclude = 'castore.conf'\n")

    port = _start_on_free_port(directory, bin_dir, run_as)
    env = {**_child_env(), "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "30"}
    done = _run(
        [
            bin_dir / "createdb",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            SUPERUSER,
            "-O",
            SUPERUSER,
            DATABASE,
        ],
        _current_user(),
        directory,
        env,
    )
    if done.returncode != 0:
        raise PgServerError(_failure("createdb", done, log))

    url = f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/{DATABASE}"
    _write_private(directory / "url", url + "\n")
    _write_private(
        directory / "env",
        f"export CASTORE_TEST_POSTGRES='{url}'\nexport CASTORE_TEST_POSTGRES_DIR='{directory}'\n",
    )
    return Server(url, directory, port, bin_dir)


def _start_on_free_port(directory: pathlib.Path, bin_dir: pathlib.Path, run_as: _RunAs) -> int:
    """Starts the server on a free port (retrying if another process took it)."""
    data, sock, log = _layout(directory)
    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        _write_settings(data, sock, port, run_as)
        try:
            _pg_ctl_start(bin_dir, directory, run_as)
        except PgServerError:
            taken = "could not bind" in _log_tail(log)
            if not taken or attempt == START_ATTEMPTS:
                raise
            continue
        return port
    raise AssertionError("unreachable")  # pragma: no cover


def _discard(directory: pathlib.Path, bin_dir: pathlib.Path) -> None:
    """Stops whatever runs in ``directory`` (best effort) and removes it."""
    data, _, _ = _layout(directory)
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(PgServerError, OSError):
            _pg_ctl_stop(bin_dir, directory, _run_as_owner(data), "immediate")
    shutil.rmtree(directory, ignore_errors=True)


def stop(directory: str | os.PathLike[str]) -> None:
    """Shuts the server down (``pg_ctl -m fast stop``) and removes ``directory``.

    A missing directory is already stopped; an empty one is removed.

    Args:
        directory: A directory made by :func:`start`.

    Raises:
        PgServerError: ``directory`` holds something else, or the server did not stop.
    """
    path = pathlib.Path(directory)
    if not path.exists():
        return
    data, _, _ = _layout(path)
    if any(path.iterdir()) and not (data.is_dir() or (path / "url").exists()):
        raise PgServerError(f"{path} is not a directory made by pgserver start")
    if (data / "PG_VERSION").exists():
        _pg_ctl_stop(_server_bin_dir(data), path, _run_as_owner(data), "fast")
    shutil.rmtree(path)


def restart(directory: str | os.PathLike[str]) -> Server:
    """Kills the server abruptly (``pg_ctl -m immediate stop``) and starts it again.

    It comes back on the same port with the same URL, after crash recovery.

    Args:
        directory: A directory made by :func:`start`.

    Returns:
        The running server.

    Raises:
        PgServerError: ``directory`` holds no server, or stopping or starting failed.
    """
    server = _read_server(pathlib.Path(directory).absolute())
    data, _, _ = _layout(server.directory)
    run_as = _run_as_owner(data)
    _pg_ctl_stop(server.bin_dir, server.directory, run_as, "immediate")
    _pg_ctl_start(server.bin_dir, server.directory, run_as)
    return server


# -- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``start``, ``stop``, ``restart``."""
    parser = argparse.ArgumentParser(
        prog="pgserver",
        description="A throwaway PostgreSQL server on 127.0.0.1 for castore's tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser(
        "start", help="initdb, start, create castore_test; print the URL"
    )
    start_parser.add_argument(
        "--dir", type=pathlib.Path, help="server directory (default: a new temporary one)"
    )
    start_parser.add_argument(
        "--install", action="store_true", help="apt-get install postgresql if missing"
    )
    start_parser.add_argument(
        "--user",
        default=DEFAULT_USER,
        help=f"who runs the server when run as root (default: {DEFAULT_USER})",
    )
    for name, text in (
        ("stop", "stop the server and remove its directory"),
        ("restart", "kill the server (-m immediate) and start it on the same port"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--dir", type=pathlib.Path, required=True, help="server directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a command; prints the URL (``start``) or nothing; errors go to stderr.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, or 1 on failure.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "start":
            server = start(args.dir, install=args.install, user=args.user)
            print(server.url, flush=True)
        elif args.command == "stop":
            stop(args.dir)
        else:
            restart(args.dir)
    except (PgServerError, OSError) as error:
        print(f"pgserver: {error}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def running(
    directory: str | os.PathLike[str] | None = None, install: bool = False
) -> Iterator[Server]:
    """A server for the duration of a ``with`` block, stopped and removed after it.

    Args:
        directory: As for :func:`start`.
        install: As for :func:`start`.

    Yields:
        The running server.
    """
    server = start(directory, install)
    try:
        yield server
    finally:
        stop(server.directory)


if __name__ == "__main__":
    sys.exit(main())
