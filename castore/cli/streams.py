"""The command line's standard streams, and the bytes its name arguments were given as.

A parent may give castore a descriptor in non-blocking mode (``O_NONBLOCK``:
a flag of the open file description, which the parent shares, so castore
never changes it). Python's streams then write or read part of the data and
stop (``BlockingIOError``, or a short count that ``BufferedWriter`` drops).
What is written here is written whole and what is read is read to its end:
on ``EAGAIN`` the process waits for the descriptor (:func:`select.poll`,
imported only then: CLI start-up) and goes on. A write that fails otherwise
raises its ``OSError`` (``BrokenPipeError`` when the reader went away).

Writes go to the descriptor itself when the stream is the process's own
(``sys.__stdout__``); a stream put in its place (pytest's ``capsys``, a
caller's) is written to as a stream.

Names (keys, namespaces, DAG names, audit text) are the UTF-8 text of the
bytes they were given as, whatever the locale (:func:`utf8_names`).
"""

from __future__ import annotations

import io
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

__all__ = [
    "Output",
    "OutputError",
    "blocking_reader",
    "discard",
    "say",
    "utf8_names",
    "write_all",
    "write_text",
]

_CHUNK = 1 << 16  # what Output holds before it writes: one pipe's buffer


class OutputError(Exception):
    """Standard output could not be written (``str``: why); the command may have done its work."""


def _wait(fd: int, event: str) -> None:
    """Wait until ``fd`` is ready (``event``: ``POLLIN`` or ``POLLOUT``), or has an error."""
    import select  # only a non-blocking descriptor ever needs it

    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, getattr(select, event))
        poller.poll()
    elif event == "POLLIN":  # pragma: no cover - a platform without poll
        select.select([fd], [], [fd])
    else:  # pragma: no cover
        select.select([], [fd], [fd])


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting while it would block.

    Raises:
        OSError: the write failed (``BrokenPipeError``: nobody reads it any more).
    """
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            _wait(fd, "POLLOUT")


class _BlockingRaw(io.RawIOBase):
    """A descriptor read as a blocking one, whatever its mode: waits on ``EAGAIN``."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while True:
            try:
                data = os.read(self._fd, len(buffer))
            except BlockingIOError:
                _wait(self._fd, "POLLIN")
                continue
            buffer[: len(data)] = data
            return len(data)


def blocking_reader(stream: TextIO) -> BinaryIO:
    """``stream`` (``sys.stdin``) as bytes, read to its end even from a non-blocking descriptor.

    The process's own stdin is read from its descriptor (nothing else read it before);
    a stream put in its place is read as it is.
    """
    if stream is not sys.__stdin__:
        return stream.buffer
    return io.BufferedReader(_BlockingRaw(stream.fileno()))


class Output:
    """A binary output written whole: buffered up to :data:`_CHUNK`, then :func:`write_all`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._fd = stream.fileno() if stream is sys.__stdout__ else -1
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        """Write ``data`` (at the latest by :meth:`flush`).

        Raises:
            OSError: as :func:`write_all`.
        """
        self._pending.append(data)
        self._size += len(data)
        if self._size >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        """Write what is held.

        Raises:
            OSError: as :func:`write_all`.
        """
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if self._fd < 0:
            self._stream.buffer.write(data)
            self._stream.flush()
        elif data:
            write_all(self._fd, data)


def write_text(stream: TextIO, text: str) -> None:
    """Write ``text`` to ``stream`` whole (the process's own: to its descriptor, after a flush).

    Raises:
        OSError: as :func:`write_all`.
    """
    if stream is sys.__stdout__ or stream is sys.__stderr__:
        stream.flush()
        write_all(stream.fileno(), text.encode(stream.encoding, "backslashreplace"))
    else:
        stream.write(text)
        stream.flush()


def say(text: str) -> None:
    """Write ``text`` to stderr if it can be; never raises.

    Closed (``2>&-``), full (``2>/dev/full``) or a pipe nobody reads: the text is
    lost, and what Python still holds for stderr goes to ``/dev/null`` (its flush
    at exit would fail again, and turn the exit code into 120).
    """
    stream = sys.stderr
    if stream is None:
        return
    try:
        write_text(stream, text)
    except (OSError, ValueError):
        discard(stream)


def discard(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at ``/dev/null``: what it still holds is dropped at exit."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


# The arguments that are names or audit text; not paths (--dir, files), not values.
_NAMES = (
    *("dag", "root_dag", "scope", "namespace", "key", "prefix", "path"),
    *("actor", "run_id", "step", "reason"),
)


def utf8_names(args: object) -> None:
    """Make each name argument of ``args`` the UTF-8 decoding of the bytes it was given as.

    Python decodes argv with the locale's encoding: in an ISO-8859-1 locale
    ``--dag dé`` (UTF-8 bytes) would be ``dÃ©``, another namespace than a
    UTF-8 process or Dagu names. Bytes that are not UTF-8 stay lone
    surrogates, which the names' validation refuses. Paths keep the
    filesystem's encoding.
    """
    if sys.getfilesystemencoding() == "utf-8" and sys.getfilesystemencodeerrors() == (
        "surrogateescape"
    ):
        return  # already the UTF-8 decoding
    for name in _NAMES:
        text = getattr(args, name, None)
        if isinstance(text, str):
            try:
                raw = os.fsencode(text)
            except UnicodeEncodeError:  # not bytes the locale decoded: text as given
                continue
            setattr(args, name, raw.decode("utf-8", "surrogateescape"))
