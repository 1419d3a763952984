"""Secrets never leave in an error or a log line: a URL's query string (platform APIs take
access_token, corpsecret, appsecret there; download URLs are signed in it) and known secret
parameters wherever they stand."""

from __future__ import annotations

import re

_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"\b((?:access_?token|corp_?secret|app_?secret|secret|sign|signature|msg_signature|"
                           r"ticket|token|password|code)=)[^&\s'\"<>,;)]+", re.IGNORECASE)


def redact_secrets(text: str) -> str:
    """What an error or a log line may say about an upstream call: the URL without its query string
    and no secret parameter's value (aiohttp's ConnectionTimeoutError names the full URL, token
    and secret included)."""
    return _SECRET_PARAM.sub(r"\1***", _URL_QUERY.sub(r"\1?…", text))
