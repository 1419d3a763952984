"""The append-only interaction log: every step writes here; attribution and reports read it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert

from gateway.models import Interaction

TYPES = (
    "invite_scan", "bound", "unbound", "message_in", "message_out", "push_queued", "push_sent",
    "push_held", "push_failed", "link_click", "coupon_issued", "coupon_redeemed", "order", "refund",
    "opt_out", "opt_in", "handover", "queued_unassigned", "merged", "merge_held", "first_reply", "tagged", "erased", "forwarded",
)  # fmt: skip


async def log_interaction(
    session,
    type_: str,
    *,
    occurred_at: datetime,
    customer_id: int | None = None,
    clerk_id: int | None = None,
    store_id: int | None = None,
    campaign_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    if type_ not in TYPES:
        raise ValueError(f"unknown interaction type {type_!r}")
    await session.execute(
        insert(Interaction).values(
            type=type_,
            occurred_at=occurred_at,
            customer_id=customer_id,
            clerk_id=clerk_id,
            store_id=store_id,
            campaign_id=campaign_id,
            payload=payload or {},
        )
    )
