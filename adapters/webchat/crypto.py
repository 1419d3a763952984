"""Session signatures and stateless session tokens (no database needed to check a token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json


def canonical_v2(user_id: str, ts: int, unionid: str | None = None) -> bytes:
    """What a v2 session signature covers: one JSON object, so no field can bleed into another."""
    return json.dumps({"ts": ts, "unionid": unionid or None, "user_id": user_id},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_v2(secret: str, user_id: str, ts: int, unionid: str | None = None) -> str:
    """What the brand's app backend computes (CONTRACT.md, v2): hex(HMAC-SHA256(secret, canonical)).
    With a unionid (mini-program logins have one) the gateway treats the user as the same customer
    as on its other WeChat channels."""
    return hmac.new(secret.encode(), canonical_v2(user_id, ts, unionid), hashlib.sha256).hexdigest()


def sign_v1(secret: str, user_id: str, ts: int) -> str:
    """Deprecated: hex(HMAC-SHA256(secret, f"{user_id}.{ts}")). Ambiguous once ids may hold a "."
    or a third field is appended (user `alice.T` at T2 read as `alice` at T), hence v2."""
    return hmac.new(secret.encode(), f"{user_id}.{ts}".encode(), hashlib.sha256).hexdigest()


def _same(expected: str, sig: str) -> bool:
    # compare_digest() raises TypeError on non-ASCII str; such a sig is forged anyway
    return sig.isascii() and hmac.compare_digest(expected, sig.lower())


def check_session(secret: str, user_id: str, ts: int, sig: str, *, version: object = None,
                  unionid: str | None = None, legacy: bool = True) -> str | None:
    """None if the session request is signed; else why not. v2 when `version` is 2; v1 only without
    a version (or 1), without a unionid, for ids without ".", and while the account allows it."""
    if version == 2 and not isinstance(version, bool):
        return None if _same(sign_v2(secret, user_id, ts, unionid), sig) else "bad signature"
    if version not in (None, 1) or isinstance(version, bool):
        return "unknown signature version (use v: 2)"
    if not legacy:
        return "v1 signatures are turned off for this account (use v: 2)"
    if unionid is not None or "." in user_id:
        return "a v1 signature cannot carry a unionid or a user id with \".\" (use v: 2)"
    return None if _same(sign_v1(secret, user_id, ts), sig) else "bad signature"


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
