"""The proxy settings an ``http://`` store's requests follow: httpx's, checked before use.

httpx reads ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``ALL_PROXY`` (either case, as
:func:`urllib.request.getproxies` does; ``NO_PROXY`` exempts hosts) when it
makes a client. A proxy it cannot use (a ``socks5://`` one without the
``socksio`` package, an ``ftp://`` one, a URL that does not parse) raised
ImportError or ValueError from inside httpx, a traceback; here it is one
line naming the variable, never its value (a proxy URL may hold a password).
So is a ``$CASTORE_TOKEN`` no header can carry.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request

import httpx

from castore.errors import BackendUnavailableError, InvalidValueError

__all__ = ["NO_PROXY_UNREAD", "check_proxy_environment", "checked_token", "proxy_variable"]

NO_PROXY_UNREAD = (  # httpx refuses some entries (an IPv6 address, a CIDR range) only then
    "$NO_PROXY (or $no_proxy) holds an entry this client cannot read (host names,"
    " .domain suffixes and IPv4 addresses are read): correct it, or unset it"
)

_SCHEMES = ("http", "https", "all")  # the proxy variables httpx reads: <scheme>_proxy


def _variable(scheme: str, url: str) -> str:
    """The name of the variable that set ``scheme``'s proxy to ``url`` (lower case wins)."""
    names = [name for name in os.environ if name.lower() == f"{scheme}_proxy"]
    given = [name for name in names if os.environ[name] == url]
    return (sorted(given, reverse=True) or [f"{scheme.upper()}_PROXY"])[0]


def check_proxy_environment() -> None:
    """Refuse, naming the variable, a proxy setting httpx cannot use.

    Raises:
        InvalidValueError: a proxy variable that is not an ``http://``, ``https://``
            or ``socks5://`` URL naming a host (``host:port`` is read as ``http://host:port``).
        BackendUnavailableError: a ``socks5://`` proxy, and the ``socksio`` package
            (``httpx[socks]``) is not installed.
    """
    found = urllib.request.getproxies()  # what httpx reads
    if any(host.strip() == "*" for host in found.get("no", "").split(",")):
        return  # NO_PROXY=*: httpx uses no proxy at all
    for scheme in _SCHEMES:
        url = found.get(scheme)
        if not url:
            continue
        name = _variable(scheme, url)
        try:
            proxy = httpx.Proxy(url if "://" in url else f"http://{url}")  # as httpx reads it
            if not proxy.url.host:  # httpx takes one, and every connection then fails
                raise ValueError("no host")
        except (ValueError, httpx.InvalidURL):
            raise InvalidValueError(
                f"${name} is not a proxy URL this client can use (http://, https:// or"
                f" socks5://): correct it, or unset it"
            ) from None
        if proxy.url.scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
            raise BackendUnavailableError(
                f"${name} names a SOCKS proxy, which needs the socksio package:"
                f" pip install 'httpx[socks]', or unset ${name}"
            )


def proxy_variable(client: httpx.Client, url: str) -> str | None:
    """The variable naming the proxy ``client`` sends requests for ``url`` through, if any.

    httpx's own choice (its mounts: the scheme's proxy, else ``ALL_PROXY``, unless
    ``NO_PROXY`` exempts the host), so that an error can say a connection that
    failed was the proxy's, not the server's.
    """
    target = httpx.URL(url)
    mounted = getattr(client, "_transport_for_url", None)  # httpx's own (0.27-0.29): private
    if mounted is None or mounted(target) is getattr(client, "_transport", None):
        return None  # no proxy, or an httpx that chooses otherwise: the error names none
    found = urllib.request.getproxies()
    scheme = target.scheme if found.get(target.scheme) else "all"
    return "$" + _variable(scheme, found.get(scheme, ""))


def checked_token(token: str | None) -> str | None:
    """``$CASTORE_TOKEN`` if a header can carry it, else InvalidValueError (never showing it)."""
    if token and not (token.isascii() and token.isprintable() and " " not in token):
        raise InvalidValueError("$CASTORE_TOKEN must be printable ASCII without spaces")
    return token or None
