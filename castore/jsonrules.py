r"""The rules every normalized JSON value obeys, shared by the parser, the converter and codec.

A value is at most :data:`MAX_VALUE_BYTES` long, at most :data:`MAX_DEPTH` deep, and valid
Unicode, repaired the way Go repairs text: each lone surrogate becomes U+FFFD
(:func:`fix_str`), and each invalid UTF-8 byte becomes one U+FFFD (the :data:`GO_REPLACE`
error handler, registered on import). Pure, no I/O, thread-safe.

>>> fix_str("a\ud800b") == "a\ufffdb"
True
>>> b"\xe2\x82!".decode("utf-8", GO_REPLACE) == "\ufffd\ufffd!"
True
"""

from __future__ import annotations

import codecs
import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Final

__all__ = ["GO_REPLACE", "MAX_DEPTH", "MAX_VALUE_BYTES", "fix_str"]

MAX_VALUE_BYTES: Final = 1 << 20  # 1 MiB, checked on raw input and on normalized bytes
MAX_DEPTH: Final = 10_000  # Go encoding/json maxNestingDepth: 10,000 ok, 10,001 rejected
GO_REPLACE: Final = "castore.go_utf8_replace"  # codecs error handler: Go's bytewise U+FFFD

_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _replace_bytewise(exc: UnicodeError) -> tuple[str, int]:
    # Python reports a maximal invalid subpart (a lead byte plus continuation bytes); Go's
    # utf8.DecodeRune returns (RuneError, 1) for each of those bytes, as continuation
    # bytes never start a rune. So one U+FFFD per byte, resuming at the same place.
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error(GO_REPLACE, _replace_bytewise)


def fix_str(text: str) -> str:
    """Replace each lone surrogate with U+FFFD and join valid surrogate pairs.

    Args:
        text: the string.

    Returns:
        ``text`` itself when it has no surrogate, else the repaired copy.
    """
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
