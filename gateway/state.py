"""The gateway state adapters may read, as a typed port (`Host.state`): each question a platform needs
answered, with its answer's type. Implemented once here over the database; a test can fake it.

Adapters never see the database: they ask these questions and get plain values back. Nothing here
makes a caller wait for a commit: the reply window counts sends this process has made and not yet
recorded (the outbox reports them), so an adapter never has to read its own write back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from gateway import advisors, focus
from gateway.model import Identity
from gateway.models import Binding, ChatMessage, Clerk, ClerkIdentity, Invite, Outbox, Store, Transfer
from gateway.models import Identity as IdentityRow

if TYPE_CHECKING:
    from gateway.clock import Clock


@dataclass(frozen=True)
class Advisor:
    name: str  # the clerk's personal display name, as customers see it


@dataclass(frozen=True)
class ClerkProfile:
    id: int
    name: str
    display_name: str
    store_id: int
    store_name: str
    status: str


@dataclass(frozen=True)
class ClerkCustomer:
    handle: int | None
    customer_id: int
    name: str
    last_message_at: str | None  # ISO, in the brand's zone
    current: bool


@dataclass(frozen=True)
class InviteChannel:
    user: str | None  # the invite's clerk's id on this account
    ref: dict[str, Any] | None  # what this platform made for the invite before (a contact QR)


@dataclass(frozen=True)
class AwaitingDelivery:
    platform_msg_id: str
    hints: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingTransfer:
    handover: str
    takeover: str
    resigned: bool
    external_ids: list[str]


@dataclass(frozen=True)
class ReplyWindow:
    opened_at: datetime
    kind: str | None  # message | event
    sent: int  # messages sent to the customer on this channel since it opened


class GatewayState:
    """What adapters may ask the gateway, answered from the database."""

    def __init__(self, db, clock: Clock, tz):
        self._db, self._clock, self._tz = db, clock, tz
        # (account, peer) → ids of messages this process sent whose "sent" record may not be committed
        self.unrecorded: dict[tuple[str, str], set[int]] = {}

    async def advisor_of(self, identity: Identity) -> Advisor | None:
        async with self._db() as s:
            row = (await s.execute(
                select(Clerk.display_name)
                .join(Binding, (Binding.clerk_id == Clerk.id) & Binding.valid_to.is_(None))
                .join(IdentityRow, IdentityRow.customer_id == Binding.customer_id)
                .where(IdentityRow.platform == identity.platform, IdentityRow.account == identity.account,
                       IdentityRow.external_id == identity.external_id)
            )).first()
        return Advisor(row[0]) if row else None

    async def invite_advisor(self, code: str) -> Advisor | None:
        async with self._db() as s:
            row = (await s.execute(select(Clerk.display_name).join(Invite, Invite.clerk_id == Clerk.id)
                                   .where(Invite.code == code, Clerk.status == "active"))).first()
        return Advisor(row[0]) if row else None

    async def clerk_profile(self, clerk_id: int) -> ClerkProfile | None:
        async with self._db() as s:
            row = (await s.execute(select(Clerk, Store.name).join(Store).where(Clerk.id == clerk_id))).first()
        if row is None:
            return None
        clerk, store_name = row
        return ClerkProfile(clerk.id, clerk.name, clerk.display_name, clerk.store_id, store_name, clerk.status)

    async def clerk_customers(self, clerk_id: int) -> list[ClerkCustomer]:
        async with self._db() as s:
            current = await focus.current(s, clerk_id, self._clock.now())
            rows = await advisors.clerk_customers(s, clerk_id)
        return [ClerkCustomer(n, c.id, advisors.customer_name(c), at.astimezone(self._tz).isoformat() if at else None,
                              c.id == current) for c, n, at in rows]

    async def invite_channel(self, code: str, account: str) -> InviteChannel | None:
        """For a platform's contact QR: the invite's clerk's id on `account` and what was made before."""
        async with self._db() as s:
            row = (await s.execute(
                select(Invite.channel_refs, ClerkIdentity.external_id)
                .join(Clerk, (Clerk.id == Invite.clerk_id) & (Clerk.status == "active"))
                .join(ClerkIdentity, (ClerkIdentity.clerk_id == Clerk.id) & (ClerkIdentity.account == account),
                      isouter=True)
                .where(Invite.code == code)
            )).first()
        return InviteChannel(row[1], (row[0] or {}).get(account)) if row is not None else None

    async def awaiting_delivery(self, account: str, days: int = 3) -> list[AwaitingDelivery]:
        """Customer messages a platform accepted but has not reported on (WeCom tasks), by platform id."""
        since = self._clock.now() - timedelta(days=days)
        async with self._db() as s:  # one row per platform id (a mass task covers many customers)
            firsts = (await s.execute(
                select(ChatMessage.platform_msg_id, func.min(Outbox.id))
                .join(Outbox, Outbox.message_id == ChatMessage.id)
                .where(ChatMessage.account == account, ChatMessage.direction == "out", ChatMessage.side == "customer",
                       ChatMessage.status == "sent", ChatMessage.platform_msg_id.is_not(None),
                       ChatMessage.created_at >= since)
                .group_by(ChatMessage.platform_msg_id)
            )).all()
            targets = dict((await s.execute(select(Outbox.id, Outbox.target).where(
                Outbox.id.in_([oid for _, oid in firsts])))).all()) if firsts else {}
        return [AwaitingDelivery(pid, (targets.get(oid) or {}).get("hints") or {}) for pid, oid in firsts]

    async def pending_transfers(self, account: str) -> list[PendingTransfer]:
        """Requested transfers on `account`, grouped the way the platform reports them."""
        async with self._db() as s:
            rows = (await s.execute(
                select(Transfer.handover_user, Transfer.takeover_user, Transfer.resigned, Transfer.external_id)
                .where(Transfer.account == account, Transfer.status == "requested")
            )).all()
        groups: dict[tuple, list[str]] = {}
        for handover_user, takeover_user, resigned, ext in rows:
            groups.setdefault((handover_user, takeover_user, bool(resigned)), []).append(ext)
        return [PendingTransfer(h, t, r, ids) for (h, t, r), ids in groups.items()]

    async def reply_window(self, identity: Identity) -> ReplyWindow | None:
        """When the customer last opened this channel's reply window, how, and how many messages
        have been sent to them on it since: those recorded, and those this process sent whose
        record is still on its way (sends to one peer are serialised in this process)."""
        async with self._db() as s:
            row = (await s.execute(
                select(IdentityRow.window_at, IdentityRow.window_kind)
                .where(IdentityRow.platform == identity.platform, IdentityRow.account == identity.account,
                       IdentityRow.external_id == identity.external_id)
            )).first()
            if row is None or row[0] is None:
                return None
            pending = self.unrecorded.get((identity.account, identity.external_id), set())
            sent = (await s.execute(
                select(func.count(ChatMessage.id))
                .where(ChatMessage.account == identity.account, ChatMessage.peer_id == identity.external_id,
                       ChatMessage.direction == "out", ChatMessage.status.in_(("sent", "delivered")),
                       ChatMessage.sent_at >= row[0], ChatMessage.id.not_in(pending))
            )).scalar_one()
        return ReplyWindow(row[0], row[1], sent + len(pending))
