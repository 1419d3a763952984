from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.adapter import AccountConfig
from gateway.netaddr import networks


class DingTalkConfig(AccountConfig):
    platform: Literal["dingtalk"] = "dingtalk"
    app_key: str = Field(min_length=1)  # also the stream clientId
    app_secret: str = Field(min_length=1)  # signs robot callbacks; the stream clientSecret
    robot_code: str = Field(min_length=1)  # usually equal to app_key for an internal app's robot
    agent_id: str | None = None  # needed for work notifications (briefs)
    mode: Literal["http", "stream"] = "http"
    api_base: str = "https://api.dingtalk.com"
    oapi_base: str = "https://oapi.dingtalk.com"
    # Event subscription (org events such as a clerk leaving); all three or none.
    corp_id: str | None = None
    event_token: str | None = Field(None, max_length=64)
    event_aes_key: str | None = Field(None, min_length=43, max_length=43)
    timestamp_window: int = Field(3600, ge=60)  # seconds a robot callback's timestamp may be off (DingTalk: 1 h)
    # Another message may come with a sign already used only while its timestamp is this fresh
    # (two callbacks may be signed in the same millisecond); after that a sign serves one msgId.
    sign_share_seconds: float = Field(5.0, ge=0, le=60)
    allowed_sources: list[str] = []  # CIDRs HTTP callbacks must come from (empty: any); see server.trusted_proxies
    notice_daily_limit: int = Field(500, ge=1)  # work notifications per user per day
    timeout: float = Field(10.0, gt=0)  # seconds per API call

    @field_validator("allowed_sources")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        networks(v)
        return v

    @model_validator(mode="after")
    def _events_complete(self):
        given = [self.corp_id, self.event_token, self.event_aes_key]
        if any(given) and not all(given):
            raise ValueError("corp_id, event_token and event_aes_key go together (event subscription)")
        return self
