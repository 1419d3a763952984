"""Session signatures and stateless session tokens (no database needed to check a token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json


def session_sig(secret: str, user_id: str, ts: int | str, unionid: str | None = None) -> str:
    """What the brand's app backend computes: hex(HMAC-SHA256(secret, f"{user_id}.{ts}")), or over
    f"{user_id}.{ts}.{unionid}" when it vouches for the user's WeChat unionid (mini-program logins
    have one): the gateway then treats them as the same customer as on its other WeChat channels."""
    msg = f"{user_id}.{ts}" if unionid is None else f"{user_id}.{ts}.{unionid}"
    return hmac.new(secret.encode(), msg.encode(), hashlib.sha256).hexdigest()


def check_session_sig(secret: str, user_id: str, ts: int, sig: str, unionid: str | None = None) -> bool:
    if not sig.isascii():  # compare_digest() raises TypeError on non-ASCII str; such a sig is forged anyway
        return False
    return hmac.compare_digest(session_sig(secret, user_id, ts, unionid), sig.lower())


def _token_key(secret: str) -> bytes:
    # Derived, so a leaked token signature never helps forge a session request and vice versa.
    return hmac.new(secret.encode(), b"webchat-session-token", hashlib.sha256).digest()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def issue_token(secret: str, user_id: str, name: str | None, expires: int, unionid: str | None = None) -> str:
    claims = {"u": user_id, "n": name, "e": expires, **({"x": unionid} if unionid else {})}
    body = _b64(json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode())
    mac = _b64(hmac.new(_token_key(secret), body.encode(), hashlib.sha256).digest())
    return f"{body}.{mac}"


def read_token(secret: str, token: str, now: int) -> dict | None:
    """The token's claims, or None if forged, malformed or expired."""
    if not token.isascii():  # ours are base64url: anything else is forged (and would make compare_digest raise)
        return None
    try:
        body, mac = token.split(".", 1)
        good = _b64(hmac.new(_token_key(secret), body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(good, mac):
            return None
        claims = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("u"), str) or claims.get("e", 0) < now:
        return None
    return claims
