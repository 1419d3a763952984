from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.adapter import AccountConfig


class FallbackTemplate(BaseModel):
    """A template message (服务通知) for replies the 48-hour window no longer allows. Templates are
    for service notices only, never marketing; their fields depend on the template you chose.
    Placeholders: {advisor}, {text}, {time}."""

    model_config = ConfigDict(extra="forbid")
    template_id: str = Field(min_length=1)
    url: str | None = None  # where tapping the notice leads (e.g. the brand's chat page)
    data: dict[str, str] = {"first": "{advisor}给您回复了消息", "keyword1": "{advisor}", "keyword2": "{time}",
                            "remark": "{text}"}


class WeChatMpConfig(AccountConfig):
    platform: Literal["wechat_mp"] = "wechat_mp"
    app_id: str = Field(min_length=1)  # also the AppID every encrypted callback must carry
    app_secret: str = Field(min_length=1)
    token: str = Field(min_length=3, max_length=32)  # signs callbacks
    encoding_aes_key: str | None = Field(None, min_length=43, max_length=43)  # None: plain mode
    service_account: bool = True  # 服务号 (4 pushes per user a month) vs 订阅号 (1 a day)
    api_base: str = "https://api.weixin.qq.com"
    qr_base: str = "https://mp.weixin.qq.com"  # where showqrcode lives
    qr_expire_seconds: int | None = Field(None, ge=60, le=2_592_000)  # None: permanent advisor QR codes
    # Per-user pushes; None takes the account type's rule (service: 4 a month, subscription: 1 a day).
    push_cap: Literal["month", "week", "day"] | None = None
    push_limit: int | None = Field(None, ge=1)
    mass_per_minute: int = Field(60, ge=1)  # the mass-send API's own rate
    timestamp_window: int = Field(300, ge=30)  # seconds a callback's timestamp may be off
    fallback_template: FallbackTemplate | None = None
    timeout: float = Field(10.0, gt=0)
