from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.adapter import AccountConfig


class WeComConfig(AccountConfig):
    platform: Literal["wecom"] = "wecom"
    corp_id: str = Field(min_length=1)  # also the ReceiveId every callback must carry
    agent_id: str = Field(pattern=r"^\d{1,10}$")  # the self-built app clerks talk to
    secret: str = Field(min_length=1)  # the app's secret (message/send, media)
    contact_secret: str | None = None  # 客户联系 secret; the app secret is used when absent
    token: str = Field(min_length=1, max_length=32)  # callback signature token
    encoding_aes_key: str = Field(min_length=43, max_length=43)
    api_base: str = "https://qyapi.weixin.qq.com"
    # Per customer mass-message cap the corp admin chose: days in the month (default), 7/week, 1/day.
    push_cap: Literal["month", "week", "day"] = "month"
    # App messages per member (WeCom drops the excess silently, so the gateway queues before it).
    member_per_minute: int = Field(30, ge=1)
    member_per_hour: int = Field(1000, ge=1)
    # Seconds a POST callback's timestamp may be off. The signature covers the timestamp, so this bounds
    # how long a captured callback can be replayed; the claim dedupe only lasts claim_retention_hours.
    timestamp_window: int = Field(300, ge=30)
    poll_interval: float = Field(60.0, gt=0)  # seconds between mass-task / transfer result polls
    timeout: float = Field(10.0, gt=0)  # seconds per API call
