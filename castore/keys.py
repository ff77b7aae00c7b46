"""Refs: validate scope, namespace, key and prefix; resolve Dagu scopes; name files.

A :class:`Ref` is ``(scope, namespace, key)``. Validation follows Dagu's
rules exactly (``../shared/reference/dagu-state-semantics.md``; docs/DESIGN.md,
"Decisions where the issue was silent"), plus a documented length
limit: keys and namespaces of up to :data:`MAX_NAME_BYTES` UTF-8 bytes work on
every filesystem because file names are derived from a sha256 of the name,
never from the name itself (docs/FORMAT.md §1).

Pure: no I/O.
"""

from __future__ import annotations

import collections
import os
import re

from castore.argcheck import check_integer, check_text
from castore.digests import small_sha256
from castore.errors import InvalidRefError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Final, NamedTuple

    class _RefFields(NamedTuple):
        scope: str
        namespace: str
        key: str

else:  # the same tuple type, without loading typing at run time
    _RefFields = collections.namedtuple("_RefFields", ("scope", "namespace", "key"))
    _RefFields.__annotations__ = {"scope": str, "namespace": str, "key": str}  # as NamedTuple
__all__ = [
    "DEFAULT_GLOBAL_NAMESPACE",
    "GO_SPACE",
    "MAX_LIMIT",
    "MAX_NAME_BYTES",
    "NAME_CHARS_CACHED",
    "SCOPES",
    "Ref",
    "RefCache",
    "dag_names",
    "env_or",
    "env_text",
    "file_id",
    "go_quote",
    "go_trim_space",
    "is_log_name",
    "log_name",
    "resolve_namespace",
    "validate_filters",
    "validate_key",
    "validate_limit",
    "validate_namespace",
    "validate_prefix",
    "validate_scope",
]

SCOPES = ("dag", "root_dag", "global", "custom")
NAME_CHARS_CACHED: Final = 16 << 20  # of the names a handle's resolved refs were asked by
_LOG_NAME = re.compile(r"(dag|root_dag|global|custom)/[0-9a-f]{64}/[0-9a-f]{64}\.log")


def is_log_name(rel: str) -> bool:
    """True if ``rel`` (relative to ``refs/``) has the shape of a ref log's path (FORMAT.md §1).

    Blob locations come from stored data; only such names are ever opened.
    """
    return _LOG_NAME.fullmatch(rel) is not None


def log_name(ref: Ref) -> str:
    """The path of ``ref``'s log relative to ``refs/`` (FORMAT.md §1): scope/ns-id/key-id.log."""
    return f"{ref.scope}/{file_id(ref.namespace)}/{file_id(ref.key)}.log"


DEFAULT_GLOBAL_NAMESPACE = "_"
MAX_NAME_BYTES = 4096  # 4 KiB of UTF-8 per key or namespace (Dagu: no limit, ENAMETOOLONG at 118)
MAX_LIMIT = 2147483647  # Dagu's int32 list limit
# Go's unicode.IsSpace set (strings.TrimSpace). Python's str.isspace also counts U+001C-U+001F.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)


def go_trim_space(text: str) -> str:
    """``text`` without leading and trailing white space as Go's ``strings.TrimSpace``."""
    return text.strip(GO_SPACE)


class Ref(_RefFields):
    """One state entry's identity: (scope, namespace, key)."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"{self.scope}/{self.namespace}/{self.key}"


_GO_SHORT_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\v": "\\v"}


def go_quote(text: str) -> str:
    r"""Quote ``text`` the way Go's ``%q`` does (used in messages).

    >>> print(go_quote("tab\there, no-break\u00a0space"))
    "tab\there, no-break\u00a0space"
    """
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append(f"\\x{ord(ch) & 0xFF:02x}")  # a byte of argv that is not UTF-8
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # another lone surrogate: its bytes, as Go shows them
            out.extend(f"\\x{byte:02x}" for byte in ch.encode("utf-8", "surrogatepass"))
        elif ch.isprintable():  # Go's unicode.IsPrint: letters, marks, numbers, symbols, punct, " "
            out.append(ch)
        else:  # other spaces, format and private-use characters, unassigned code points
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _utf8_len(text: str, what: str) -> int:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRefError(f"invalid {what} {go_quote(text)}: not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise InvalidRefError(f"{what} is {size} bytes, longer than the maximum {MAX_NAME_BYTES}")
    return size


def validate_scope(scope: str) -> str:
    """Return ``scope`` if it is one of :data:`SCOPES` (case-sensitive).

    Raises:
        InvalidRefError: for any other string.
    """
    if scope not in SCOPES:
        raise InvalidRefError(f"unsupported scope {go_quote(scope)}")
    return scope


def validate_namespace(namespace: str) -> str:
    r"""Check a namespace with Dagu's rules plus the length limit.

    Rejected: blank (only whitespace), containing ``/`` or ``\\``, exactly
    ``.`` or ``..``, not encodable as UTF-8, longer than :data:`MAX_NAME_BYTES`.

    Raises:
        InvalidRefError: naming what was wrong.
    """
    if not go_trim_space(namespace):
        raise InvalidRefError("namespace is required")
    if "/" in namespace or "\\" in namespace or namespace in (".", ".."):
        raise InvalidRefError(f"invalid namespace {go_quote(namespace)}")
    _utf8_len(namespace, "namespace")
    return namespace


def validate_key(key: str, what: str = "key") -> str:
    r"""Check a key with Dagu's rules plus the length limit.

    Rejected: blank, a leading or trailing ``/``, any ``\\``, an empty,
    ``.`` or ``..`` segment, not encodable as UTF-8, too long.

    Raises:
        InvalidRefError: naming what was wrong.
    """
    if not go_trim_space(key):
        raise InvalidRefError(f"{what} is required")
    bad = key.startswith("/") or key.endswith("/") or "\\" in key
    if bad or any(seg in ("", ".", "..") for seg in key.split("/")):
        raise InvalidRefError(f"invalid {what} {go_quote(key)}")
    _utf8_len(key, what)
    return key


def validate_prefix(prefix: str) -> str:
    """Check a list prefix with Dagu's rules; return it unchanged.

    Matching stays a plain byte-prefix test, so ``cur`` matches ``cursor``.

    Raises:
        InvalidRefError: naming what was wrong.
        TypeError: not a str.
    """
    check_text(prefix, "prefix")
    if not prefix:
        return prefix
    if prefix.startswith("/") or "\\" in prefix:
        raise InvalidRefError(f"invalid key prefix {go_quote(prefix)}")
    rest = prefix[:-1] if prefix.endswith("/") else prefix
    if rest:
        validate_key(rest, "key_prefix")
    return prefix


def validate_limit(limit: int) -> int:
    """Check a list limit: 0 (no limit) up to :data:`MAX_LIMIT`.

    Raises:
        InvalidRefError: when negative or too large.
        TypeError: not an int.
    """
    check_integer(limit, "limit")
    if limit < 0:
        raise InvalidRefError("limit must be greater than or equal to zero")
    if limit > MAX_LIMIT:
        raise InvalidRefError(f"limit exceeds {MAX_LIMIT}")
    return limit


def validate_filters(scope: str | None, namespace: str | None) -> None:
    """Check optional scope and namespace filters (of audit, export, compact).

    Raises:
        InvalidRefError: a bad scope or namespace.
        TypeError: either is not a str or None.
    """
    check_text(scope, "scope", optional=True)
    check_text(namespace, "namespace", optional=True)
    if scope is not None:
        validate_scope(scope)
    if namespace is not None:
        validate_namespace(namespace)


def resolve_namespace(
    scope: str, namespace: str | None, *, dag: str | None, root_dag: str | None
) -> str:
    """Resolve a scope's namespace as Dagu's state executor does.

    ``dag`` defaults to the current DAG name, ``root_dag`` to the root DAG
    name (falling back to the DAG name), ``global`` to ``_``; ``custom`` needs
    an explicit namespace. An explicit (non-empty) namespace always wins.

    Raises:
        InvalidRefError: unknown scope, missing or invalid namespace.
    """
    check_text(scope, "scope")
    check_text(namespace, "namespace", optional=True)
    validate_scope(scope)
    if namespace:
        return validate_namespace(namespace)
    if scope == "custom":
        raise InvalidRefError(
            "namespace is required for custom scope: give --namespace NAME (library and API:"
            " namespace)"
        )
    if scope == "global":
        return DEFAULT_GLOBAL_NAMESPACE
    name = (_root_dag_name(root_dag) or dag) if scope == "root_dag" else dag
    if not name or not go_trim_space(name):
        if scope == "root_dag":
            raise InvalidRefError(
                "namespace is required: scope root_dag takes the root DAG's name, else the"
                f" DAG name, which {'is blank' if name else 'are not set'}; give --root-dag"
                " NAME or --dag NAME, set $CASTORE_ROOT_DAG or $DAG_NAME, or give --namespace"
                " NAME (library and API: root_dag, dag or namespace)"
            )
        raise InvalidRefError(
            f"namespace is required: scope dag takes the DAG name, which is "
            f"{'blank' if name else 'not set'}; give --dag NAME, set $DAG_NAME, "
            "or give --namespace NAME (library and API: dag or namespace)"
        )
    return validate_namespace(name)


class RefCache:
    """Refs already resolved: validation is pure, so a store handle remembers its answers.

    At most ``size`` refs and :data:`NAME_CHARS_CACHED` characters of names, then emptied.
    Thread-safe (each step is one dict operation); a request's ``dag`` may hold 1 MB.
    """

    def __init__(self, size: int = 65536) -> None:  # as the backend's caches: a working set fits
        self._size = size
        self._refs: dict[tuple[str, str, str | None, str | None, str | None], Ref] = {}
        self._chars = 0

    def clear(self) -> None:
        """Forget every answer (a handle's close)."""
        self._refs, self._chars = {}, 0

    def resolve(
        self, key: str, scope: str, namespace: str | None, dag: str | None, root_dag: str | None
    ) -> Ref:
        """Validate and resolve ``(scope, namespace, key)`` as :func:`resolve_namespace` does.

        Raises:
            InvalidRefError: bad scope, namespace or key.
        """
        dags = (None, None) if namespace else (dag, root_dag)  # kept only where they count
        asked = (key, scope, namespace, *dags)
        try:
            ref = self._refs.get(asked)
        except TypeError:  # an unhashable argument: validation below names it
            ref = None
        # A str subclass (a StrEnum) equals the str it holds, so it would hit that str's
        # entry: taken once the str was resolved, refused before. The types decide.
        if (
            ref is None
            or type(key) is not str
            or type(scope) is not str
            or (type(namespace) is not str and namespace is not None)
        ):
            check_text(key, "key")
            check_text(scope, "scope")
            check_text(namespace, "namespace", optional=True)
            ns = resolve_namespace(scope, namespace, dag=dag, root_dag=root_dag)
            ref = Ref(scope, ns, validate_key(key))
            chars = sum(len(name) for name in asked if name)  # each a str by now
            if len(self._refs) >= self._size or self._chars + chars > NAME_CHARS_CACHED:
                self._refs, self._chars = {}, 0
            self._chars += chars
            self._refs[asked] = ref
        return ref


def file_id(name: str) -> str:
    """The file-system name of a namespace or key: lowercase hex sha256 of its UTF-8.

    Fixed length (64 characters of ``[0-9a-f]``), so long names, case
    variants and Windows-invalid characters can never collide or fail.
    """
    return small_sha256(name.encode("utf-8"))


# Dagu's reference to the root run's DAG name (spec 017; older releases put it under
# ``context.``): a sub-DAG run resolves it, a root run has none and leaves it as written.
_ROOT_NAME_REFERENCES: Final = frozenset(("${run.root_name}", "${context.run.root_name}"))


def _root_dag_name(root_dag: str | None) -> str | None:
    """The root DAG name given, None for Dagu's unresolved reference to it (a root run).

    So a Dagu step can say ``CASTORE_ROOT_DAG: ${run.root_name}`` in a root run and in its
    sub-DAG runs alike: in the root run, the DAG's own name is the root's.

    Raises:
        InvalidRefError: another unresolved ``${...}`` reference (a misspelt one, say): it
            would silently name a namespace of its own.
    """
    text = go_trim_space(root_dag) if root_dag is not None else ""
    if text in _ROOT_NAME_REFERENCES or root_dag is None:
        return None
    if text.startswith("${") and text.endswith("}"):
        raise InvalidRefError(
            f"root DAG name: unresolved reference {go_quote(text)}; castore takes"
            " ${run.root_name} (a root run: the DAG's own name) or a DAG name"
        )
    return root_dag


def env_text(variable: str) -> str:
    """The environment variable as the UTF-8 text of its bytes ("" when unset).

    Python decodes the environment with the locale's encoding: in an
    ISO-8859-1 locale ``DAG_NAME=dé`` (UTF-8 bytes, as Dagu sets it) would
    read ``dÃ©``, another namespace than Dagu's. Bytes that are not UTF-8
    stay lone surrogates, which the names' validation refuses.
    """
    environb = getattr(os, "environb", None)
    if environb is None:  # pragma: no cover - a platform without a bytes environment
        return os.environ.get(variable, "")
    raw = environb.get(variable.encode())
    return "" if raw is None else raw.decode("utf-8", "surrogateescape")


def env_or(value: str | None, variable: str) -> str | None:
    """Return ``value`` when given, else the environment variable (:func:`env_text`, or None)."""
    return value if value is not None else (env_text(variable) or None)


def dag_names(dag: str | None, root_dag: str | None) -> tuple[str | None, str | None]:
    """The DAG and root DAG that resolve the ``dag`` and ``root_dag`` scopes.

    Each as given, else ``$DAG_NAME`` and ``$CASTORE_ROOT_DAG`` (None: neither, or
    Dagu's ``${run.root_name}`` left unresolved: a root run).
    """
    check_text(dag, "dag", optional=True)
    check_text(root_dag, "root_dag", optional=True)
    root = env_or(root_dag, "CASTORE_ROOT_DAG")  # Dagu's reference left unresolved: not given
    unresolved = root is not None and go_trim_space(root) in _ROOT_NAME_REFERENCES
    return env_or(dag, "DAG_NAME"), None if unresolved else root
