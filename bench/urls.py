"""Secrets in URLs (Optuna storages, MLflow tracking URIs): one rule for what is hidden, wherever a
URL is shown or written down (messages, errors, manifests, ``mlflow_run.json``, ``study.json``).

Hidden: the password of the user info (``scheme://user:PASSWORD@host``, also without a scheme:
``user:PASSWORD@host/db``), and the value of every query parameter whose name holds ``pass``,
``pwd``, ``secret``, ``token``, ``key``, ``sig``, ``auth`` or ``credential`` (``?token=``,
``?password=``, ``?sslpassword=``, ``?api_key=``, ``?X-Amz-Signature=``, ``?sig=``...). The user
name and the host stay visible: they say where a connection goes.
"""
from __future__ import annotations

from urllib.parse import quote, quote_plus, unquote

MASK = "***"
# parts of query parameter names whose values are secrets (libpq's password and sslpassword, tokens, keys,
# signed URLs); hiding a harmless one (sslkey, a file name) costs nothing, showing a secret one would
SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "sig", "auth", "credential")


def _secret_parameter(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


def _split(url: str) -> tuple[str, str | None, str, str, str]:
    """(scheme://user, password or None, @host/path, '?' or '', query) of a URL.

    The password runs from the user's ':' to the *last* '@': a password may hold '@', '/' or '?'
    that were not percent-encoded, and every character of it must stay hidden (an '@' in a query
    value hides more than needed, never less). Without a scheme, ``user:pass@host`` counts
    as user info when nothing before its '@' is a '/' (``journal:/a@b/log`` is a path).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        at = url.rfind("@")
        if at < 0 or ":" not in url[:at] or "/" in url[:at]:
            return url, None, "", "", ""
        scheme, sep, rest = "", "", url
    at = rest.rfind("@")
    user, colon, password = rest[:at].partition(":") if at >= 0 else ("", "", "")
    head = f"{scheme}{sep}{user}" if colon else f"{scheme}{sep}"
    tail = rest[at:] if colon else rest
    tail, q, query = tail.partition("?")
    return head, password if colon else None, tail, q, query


def display_url(url: str) -> str:
    """``url`` with its secrets hidden (see the module's rule), for messages, logs and records."""
    head, password, tail, q, query = _split(url)
    if q:
        query = "&".join(f"{k}={MASK}" if _secret_parameter(k) else k + eq + v
                         for k, eq, v in (p.partition("=") for p in query.split("&")))
    return head + (f":{MASK}" if password is not None else "") + tail + q + query


def redact(text: str, url: str) -> str:
    """``text`` (an error message that may quote ``url``, whole or in parts, raw or percent-encoded)
    with every secret of ``url`` hidden."""
    if not url:
        return text
    _, password, _, _, query = _split(url)
    secrets = [password] if password else []
    secrets += [v for k, _, v in (p.partition("=") for p in query.split("&")) if _secret_parameter(k) and v]
    text = text.replace(url, display_url(url))
    for secret in sorted(secrets, key=len, reverse=True):
        raw = unquote(secret)
        for form in sorted({secret, raw, quote(raw, safe=""), quote_plus(raw, safe="")}, key=len, reverse=True):
            text = text.replace(form, MASK)
    return text
