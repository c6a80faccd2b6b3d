"""Keep secrets that ride in URLs out of logs, error messages and progress bars.

Download links and tracking URIs may carry credentials (``https://user:password@host``) or
tokens in the query string (``?token=...``, pre-signed ``X-Amz-Signature=...``). Anything this
project prints about a URL goes through :func:`redact`, which keeps the scheme, host and path
(what one needs to tell URLs apart) and masks the user information and every query value.
"""

from __future__ import annotations

import re

MASK = "***"
# "scheme://user:password@" or "scheme://token@", up to the "@" that ends the authority.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
# "?name=value" and "&name=value": the value goes, whatever the name (tokens have many).
_QUERY_VALUE = re.compile(r"(?P<lead>[?&][^=&\s#?]+=)[^&\s#'\"]+")


def redact(text: str) -> str:
    """``text`` (a URL, or a message that quotes one) with credentials and query values masked."""
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    return _QUERY_VALUE.sub(rf"\g<lead>{MASK}", text)


def redact_error(error: BaseException) -> str:
    """``"ExceptionName: message"`` with URLs in the message redacted (HTTP libraries quote the
    URL they failed on, credentials included)."""
    return redact(f"{type(error).__name__}: {error}")
