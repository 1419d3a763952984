from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.adapter import AccountConfig


class WebchatConfig(AccountConfig):
    platform: Literal["webchat"] = "webchat"
    secret: str = Field(min_length=16)  # HMAC key shared with the brand's app backend
    session_ttl: int = Field(7 * 24 * 3600, ge=60)  # seconds a session token lives
    ts_window: int = Field(300, ge=10)  # allowed clock skew of a session request
    dev_login: bool = False  # the built-in page may sign in without the brand backend (local play only)
    max_text: int = Field(4000, ge=1)
    # Accept deprecated v1 session signatures (f"{user_id}.{ts}"; no unionid, no "." in ids). Turn it
    # off once the brand's backend signs v2.
    legacy_signature: bool = True
