from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from gateway.adapter import AccountConfig

_ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?$")


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
    # The brand's H5 origins ("https://h5.brand.com"): they may frame the chat page
    # (Content-Security-Policy frame-ancestors). Empty: only the gateway's own pages may.
    allowed_origins: list[str] = []

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:  # scheme://host[:port], nothing more: it goes into a response header verbatim
            if not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin like https://h5.brand.com")
        return v
