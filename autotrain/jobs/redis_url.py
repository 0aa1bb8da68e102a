"""A shared Redis' URL as a user writes it: checked, completed for Celery, and its faults told.

`redis_url` reaches three clients that read its query string each in its own way: redis-py, kombu
(the broker) and Celery's Redis result backend. Over TLS (`rediss://`) the backend refuses a URL
without `ssl_cert_reqs`, and redis-py refuses `CERT_REQUIRED`, the spelling Celery's own docs
use; `usable_redis_url` writes the one form all three accept. `explain_redis_failure` turns a
refused connection into what is wrong and what to change: the password, TLS on one side only,
a certificate this host does not trust.
"""

from __future__ import annotations

import os
import socket
import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from autotrain.errors import AutotrainError
from autotrain.jobs.local_redis import redact

__all__ = ["usable_redis_url", "explain_redis_failure", "SCHEMES"]

SCHEMES = ("redis", "rediss")  # what redis-py and kombu both read; rediss:// is TLS
_CERT_REQS = {"none": "none", "optional": "optional", "required": "required",
              "cert_none": "none", "cert_optional": "optional", "cert_required": "required"}  # fmt: skip
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_TLS_OPTIONS = ("ssl_cert_reqs", *_TLS_FILES)


def usable_redis_url(url: str) -> str:
    """`url` as redis-py, kombu and Celery's result backend all read it; AutotrainError naming
    the part a user got wrong (a scheme, a TLS option on a plain URL, a file that is not there).

    A `rediss://` URL without `ssl_cert_reqs` gets `ssl_cert_reqs=required`: redis-py's own
    default (the server's certificate is checked), which Celery wants spelled out."""
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme not in SCHEMES:
        raise AutotrainError(
            f"AUTOTRAIN_REDIS_URL {shown!r} is not a Redis URL. Fix: redis://:PASSWORD@host:6379/0,"
            " or rediss://:PASSWORD@host:6380/0 for TLS."
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.scheme == "redis":
        tls = [f"{key}={value}" for key, value in query if key in _TLS_OPTIONS]
        if tls:
            raise AutotrainError(
                f"AUTOTRAIN_REDIS_URL {shown!r} has {tls[0]}, a TLS option, on a plain redis:// "
                "URL. Fix: start it with rediss:// (and use the server's TLS port)."
            )
        return url
    checked = [(key, _checked_tls_option(key, value, shown)) for key, value in query]
    if not any(key == "ssl_cert_reqs" for key, _ in checked):
        checked.append(("ssl_cert_reqs", "required"))
    return urlunsplit(parts._replace(query=urlencode(checked, safe="/")))


def explain_redis_failure(url: str, exc: BaseException) -> str | None:
    """What in `url` or in the server's TLS setup made `exc`, and the fix, in one message; None
    when the server is just down or out of reach (an outage, not a mistake to fix)."""
    shown, text = redact(url), str(exc)
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return (
            f"Redis at {shown} refused the credentials ({text.rstrip('.')}). Fix: put the "
            "server's password, or its ACL user and that user's password, in AUTOTRAIN_REDIS_URL:"
            " rediss://USER:PASSWORD@host:port/0 (rediss://:PASSWORD@... for the default user)."
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"Redis at {shown} refused a command to this ACL user ({text}). Fix: give the user "
            "the rights of the README's `ACL SETUSER` line (section 'Redis across the internet')."
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        fix = ("connect by a name the certificate holds (its subjectAltName)"
               if "mismatch" in text.lower() else
               "add ssl_ca_certs=/path/to/ca.crt to AUTOTRAIN_REDIS_URL: the CA certificate that "
               "signed the server's")  # fmt: skip
        reason = text.rstrip(".")
        return f"Redis at {shown} showed a certificate this host does not trust ({reason}). Fix: {fix}."
    parts = urlsplit(url)
    if parts.scheme == "rediss" and ("SSL" in text or "EOF occurred" in text):
        return (
            f"Redis at {shown} does not speak TLS on port {parts.port or 6379} ({text}). Fix: use "
            "the server's TLS port (tls-port in redis.conf), or redis:// on a private network."
        )
    dropped = "reset by peer" in text or "closed by server" in text  # what a TLS port does
    if (
        parts.scheme == "redis"
        and dropped
        and _speaks_tls(parts.hostname or "", parts.port or 6379)
    ):
        return (
            f"Redis at {shown} speaks TLS on port {parts.port or 6379}, and the URL is plain "
            "redis://. Fix: start AUTOTRAIN_REDIS_URL with rediss:// and add "
            "?ssl_ca_certs=/path/to/ca.crt when its certificate is signed by your own CA."
        )
    return None


def _checked_tls_option(key: str, value: str, shown: str) -> str:
    """One query option of a rediss:// URL, as all three clients read it."""
    if key == "ssl_cert_reqs":
        if value.lower() not in _CERT_REQS:
            raise AutotrainError(
                f"AUTOTRAIN_REDIS_URL {shown!r}: ssl_cert_reqs={value} is none of required, "
                "optional, none. Fix: ssl_cert_reqs=required (check the server's certificate)."
            )
        return _CERT_REQS[value.lower()]
    if key in _TLS_FILES and not os.path.isfile(value):
        raise AutotrainError(
            f"AUTOTRAIN_REDIS_URL {shown!r}: {key}={value}: no such file on this host. Fix: copy "
            "it here (the CA certificate for ssl_ca_certs) and give its path."
        )
    return value


def _speaks_tls(host: str, port: int) -> bool:
    """Whether a TLS handshake with host:port succeeds (the certificate not checked): told apart
    from a server that merely dropped a plain connection."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (socket.create_connection((host, port), timeout=3) as raw,
              context.wrap_socket(raw, server_hostname=host)):  # fmt: skip
            return True
    except (OSError, ssl.SSLError):
        return False
