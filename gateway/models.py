"""Tables. Constraints do the dedupe and the invariants; code relies on them, never on caches."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Field, SQLModel

from gateway.db import Money, UTCDateTime, utcnow

metadata = SQLModel.metadata


def _ts(nullable: bool = False, index: bool = False, default: bool = True) -> Any:
    kw: dict[str, Any] = {"sa_type": UTCDateTime, "nullable": nullable, "index": index}
    if default and not nullable:
        kw["default_factory"] = utcnow
    else:
        kw["default"] = None
    return Field(**kw)


class Store(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    city: str | None = Field(default=None, max_length=100)
    lat: float | None = None
    lng: float | None = None
    opening_hours: dict | None = Field(default=None, sa_type=JSON)
    created_at: datetime = _ts()


class Clerk(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)  # legal / HR name, for the brand
    display_name: str = Field(max_length=100)  # personal name customers see
    store_id: int = Field(foreign_key="store.id", index=True)
    role: str = Field(default="clerk", max_length=20)  # clerk | manager
    status: str = Field(default="active", max_length=20)  # active | left
    last_work_account: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    left_at: datetime | None = _ts(nullable=True)


class ClerkIdentity(SQLModel, table=True):
    """The clerk's user id in a work IM account (DingTalk userid, WeCom userid, workbench)."""

    __tablename__ = "clerk_identity"
    __table_args__ = (
        sa.UniqueConstraint("platform", "account", "external_id", name="uq_clerk_identity_ext"),
        sa.UniqueConstraint("clerk_id", "account", name="uq_clerk_identity_account"),
    )
    id: int | None = Field(default=None, primary_key=True)
    clerk_id: int = Field(foreign_key="clerk.id", index=True)
    platform: str = Field(max_length=32)
    account: str = Field(max_length=64)
    external_id: str = Field(max_length=128)


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str | None = Field(default=None, max_length=200)
    phone_hash: str | None = Field(default=None, max_length=64, index=True)
    store_id: int | None = Field(default=None, foreign_key="store.id", index=True)  # home store
    tags: list | None = Field(default=None, sa_type=JSON)
    opted_out_at: datetime | None = _ts(nullable=True)
    consent_at: datetime | None = _ts(nullable=True)
    consent_version: str | None = Field(default=None, max_length=32)
    erased_at: datetime | None = _ts(nullable=True)
    last_identity_id: int | None = Field(default=None)
    merged_into_id: int | None = Field(default=None)  # set when this record was merged into another customer
    created_at: datetime = _ts()


class Identity(SQLModel, table=True):
    """A customer's identity on one channel account (webchat user id, openid, external_userid)."""

    __table_args__ = (sa.UniqueConstraint("platform", "account", "external_id", name="uq_identity_ext"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    platform: str = Field(max_length=32)
    account: str = Field(max_length=64)
    external_id: str = Field(max_length=128)
    unionid: str | None = Field(default=None, max_length=128, index=True)
    profile: dict | None = Field(default=None, sa_type=JSON)
    created_at: datetime = _ts()
    last_seen_at: datetime | None = _ts(nullable=True)
    # The platform's reply window (Official Account customer-service messages): opened by the
    # customer's last message ("message") or a follow / scan / menu click ("event").
    window_at: datetime | None = _ts(nullable=True)
    window_kind: str | None = Field(default=None, max_length=16)


class Invite(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=32, unique=True)
    clerk_id: int = Field(foreign_key="clerk.id", index=True)
    source: str | None = Field(default=None, max_length=64)
    campaign_id: int | None = None
    # What platforms made for this invite, by account (WeCom: the contact way's config_id and QR).
    channel_refs: dict | None = Field(default=None, sa_type=JSON)
    created_at: datetime = _ts()


class Binding(SQLModel, table=True):
    """Customer ↔ advisor over time. History is never rewritten; one open binding per customer."""

    __table_args__ = (
        sa.Index(
            "uq_binding_open",
            "customer_id",
            unique=True,
            sqlite_where=sa.text("valid_to IS NULL"),
            postgresql_where=sa.text("valid_to IS NULL"),
        ),
        sa.Index("ix_binding_clerk_open", "clerk_id", "valid_to"),
    )
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id")
    clerk_id: int = Field(foreign_key="clerk.id")
    store_id: int | None = Field(default=None, foreign_key="store.id")
    valid_from: datetime = _ts()
    valid_to: datetime | None = _ts(nullable=True)
    source: str = Field(default="invite", max_length=64)
    invite_id: int | None = Field(default=None, foreign_key="invite.id")
    end_reason: str | None = Field(default=None, max_length=64)
    # A binding opened by a merge (source "merge") continues the advisor of the merged record:
    # since when they have served the person (None: valid_from). "Served first" and a campaign's
    # bound_after / bound_before read it; the ledger does not (it reads valid_from).
    served_since: datetime | None = _ts(nullable=True)


class Handle(SQLModel, table=True):
    """The short `#n` a clerk uses for a customer: stable per (clerk, customer)."""

    __table_args__ = (
        sa.UniqueConstraint("clerk_id", "customer_id", name="uq_handle_customer"),
        sa.UniqueConstraint("clerk_id", "n", name="uq_handle_n"),
    )
    id: int | None = Field(default=None, primary_key=True)
    clerk_id: int = Field(foreign_key="clerk.id")
    customer_id: int = Field(foreign_key="customer.id")
    n: int


class HandleCounter(SQLModel, table=True):
    """The last `#n` given out per clerk, on PostgreSQL: taken in a transaction of its own that
    commits at once, so two batches binding customers to the same clerks never wait for each
    other's uncommitted numbers (max + 1 inside the batch deadlocked). Owned by advisors.handle_for."""

    __tablename__ = "handle_counter"
    clerk_id: int = Field(foreign_key="clerk.id", primary_key=True)
    last_n: int


class ChatMessage(SQLModel, table=True):
    """Every message through the gateway, on either side, with its delivery status."""

    __tablename__ = "message"
    __table_args__ = (sa.Index("ix_message_peer", "platform", "account", "peer_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    direction: str = Field(max_length=3)  # in (from the peer) | out (to the peer)
    side: str = Field(max_length=10)  # customer | clerk
    platform: str = Field(max_length=32)
    account: str = Field(max_length=64)
    peer_id: str = Field(max_length=128)  # external id of the other party on that account
    # The customer side's peer; on the clerk side the customer a message quotes or names (a relayed
    # copy, a notice), so export and erasure find the clerk's copies.
    customer_id: int | None = Field(default=None, index=True)
    clerk_id: int | None = Field(default=None, index=True)
    segments: list = Field(sa_type=JSON)
    text: str = Field(default="", sa_type=sa.Text)
    sender_name: str | None = Field(default=None, max_length=100)
    status: str = Field(default="received", max_length=16)  # received | queued | sent | delivered | failed | held
    client_msg_id: str | None = Field(default=None, max_length=128)
    platform_msg_id: str | None = Field(default=None, max_length=128)
    created_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)


class InboundClaim(SQLModel, table=True):
    """The durable dedupe of inbound callbacks; pending claims are replayed after a restart."""

    __tablename__ = "inbound_claim"
    __table_args__ = (
        sa.UniqueConstraint("platform", "account", "dedupe_key", name="uq_inbound_claim"),
        sa.Index("ix_inbound_claim_pending", "status", "received_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    platform: str = Field(max_length=32)
    account: str = Field(max_length=64)
    dedupe_key: str = Field(max_length=255)
    status: str = Field(default="pending", max_length=16)  # pending | done | failed
    events: list = Field(sa_type=JSON)
    received_at: datetime = _ts()
    processed_at: datetime | None = _ts(nullable=True)
    lease_until: datetime | None = _ts(nullable=True)  # replayed by anyone once this has passed
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=sa.Text)


class CallbackSignature(SQLModel, table=True):
    """A platform signature that covers no body (DingTalk's robot sign), bound to the one message it
    first came with, until its timestamp leaves the window. The primary key is the check."""

    __tablename__ = "callback_signature"
    account: str = Field(max_length=64, primary_key=True)
    sign: str = Field(max_length=128, primary_key=True)
    msg_id: str = Field(max_length=128)
    expires_at: datetime = _ts(index=True)


class Outbox(SQLModel, table=True):
    __table_args__ = (
        # Each account's send lane claims its own rows (gateway/outbox.py): bulk by due time,
        # conversation in id order.
        sa.Index("ix_outbox_due", "status", "account", "priority", "next_attempt_at", "id"),
        sa.Index("ix_outbox_conversation", "status", "account", "priority", "id"),
        # A peer's earlier rows still unsent hold its later ones back, across processes too.
        sa.Index("ix_outbox_peer", "account", "peer", "priority", "status", "id"),
        sa.Index("ix_outbox_customer_kind", "customer_id", "kind", "created_at"),  # per-customer push caps
    )
    id: int | None = Field(default=None, primary_key=True)
    idem_key: str = Field(max_length=255, unique=True)
    platform: str = Field(max_length=32)
    account: str = Field(max_length=64)
    peer: str | None = Field(default=None, max_length=128)  # target.identity.external_id: per-peer order
    target: dict = Field(sa_type=JSON)
    message: dict = Field(sa_type=JSON)
    kind: str = Field(default="reply", max_length=16)  # reply | notice | welcome | brief | push | transfer
    priority: int = 2  # lower is claimed first: a welcome has 20 s, a chat must not wait behind a campaign
    status: str = Field(default="pending", max_length=16)  # pending | sending | sent | dead | held | cancelled
    attempts: int = 0
    next_attempt_at: datetime = _ts()
    lease_until: datetime | None = _ts(nullable=True)
    claimed_by: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    error_code: str | None = Field(default=None, max_length=64)
    platform_msg_id: str | None = Field(default=None, max_length=128)
    customer_id: int | None = Field(default=None, index=True)
    clerk_id: int | None = None
    campaign_id: int | None = None
    message_id: int | None = Field(default=None, foreign_key="message.id")
    created_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)


class Transfer(SQLModel, table=True):
    """A customer handed to another clerk through the platform that holds the contact (WeCom).
    The binding moves only when the platform reports the transfer done."""

    __table_args__ = (
        sa.Index("ix_transfer_open", "account", "status"),
        sa.Index("ix_transfer_customer", "customer_id", "requested_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id")
    from_clerk_id: int = Field(foreign_key="clerk.id")
    to_clerk_id: int = Field(foreign_key="clerk.id")
    platform: str = Field(max_length=32)
    account: str = Field(max_length=64)
    external_id: str = Field(max_length=128)  # the customer on that platform
    handover_user: str = Field(max_length=128)
    takeover_user: str = Field(max_length=128)
    resigned: bool = False  # resigned/transfer_customer (the clerk left) vs in-service
    status: str = Field(default="requested", max_length=20)  # requested | done | refused | receiver_full | failed
    reason: str | None = Field(default=None, max_length=200)
    requested_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)


class Conversation(SQLModel, table=True):
    """A customer's message waiting for their advisor: opened by the first unanswered message,
    closed by the advisor's first reply (first-reply time), reminded and escalated on the way."""

    __table_args__ = (
        sa.Index("uq_conversation_open", "customer_id", unique=True,
                 sqlite_where=sa.text("first_reply_at IS NULL"), postgresql_where=sa.text("first_reply_at IS NULL")),
        sa.Index("ix_conversation_waiting", "first_reply_at", "started_at"),
        sa.Index("ix_conversation_clerk", "clerk_id", "started_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id")
    clerk_id: int | None = Field(default=None, foreign_key="clerk.id")
    store_id: int | None = Field(default=None, foreign_key="store.id")
    started_at: datetime = _ts()
    first_reply_at: datetime | None = _ts(nullable=True)
    reminded_at: datetime | None = _ts(nullable=True)
    escalated_at: datetime | None = _ts(nullable=True)


class AdvisorRequest(SQLModel, table=True):
    """A bound customer scanned another clerk's code under `ask_customer`: they are asked, and
    switch if they say so before it expires."""

    __tablename__ = "advisor_request"
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    clerk_id: int = Field(foreign_key="clerk.id")
    invite_id: int | None = Field(default=None, foreign_key="invite.id")
    created_at: datetime = _ts()
    resolved_at: datetime | None = _ts(nullable=True)
    outcome: str | None = Field(default=None, max_length=20)  # switched | kept | expired


class AuditEntry(SQLModel, table=True):
    """Who did what through the admin API (every change, every export)."""

    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)
    token_id: int | None = None
    role: str = Field(max_length=20)
    method: str = Field(max_length=8)
    path: str = Field(max_length=300)
    status: int
    detail: dict | None = Field(default=None, sa_type=JSON)


class Product(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    sku: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=200)
    price: Decimal = Field(sa_type=Money)
    image_url: str | None = Field(default=None, max_length=500)
    url: str | None = Field(default=None, max_length=500)
    store_ids: list | None = Field(default=None, sa_type=JSON)  # stocked in; None: everywhere
    created_at: datetime = _ts()


class Coupon(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    value: Decimal = Field(sa_type=Money)
    valid_from: datetime = _ts()
    valid_to: datetime = _ts()
    created_at: datetime = _ts()


class CouponCode(SQLModel, table=True):
    """The pool: one unique code per customer, issued once, redeemed by an order."""

    __tablename__ = "coupon_code"
    __table_args__ = (
        sa.UniqueConstraint("coupon_id", "code", name="uq_coupon_code"),
        sa.Index("uq_coupon_customer", "coupon_id", "customer_id", unique=True,
                 sqlite_where=sa.text("customer_id IS NOT NULL"), postgresql_where=sa.text("customer_id IS NOT NULL")),
        sa.Index("ix_coupon_free", "coupon_id", "customer_id", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    coupon_id: int = Field(foreign_key="coupon.id")
    code: str = Field(max_length=64)
    customer_id: int | None = Field(default=None, foreign_key="customer.id")
    issued_at: datetime | None = _ts(nullable=True)
    redeemed_at: datetime | None = _ts(nullable=True)
    order_id: str | None = Field(default=None, max_length=128)


class Campaign(SQLModel, table=True):
    __table_args__ = (sa.Index("ix_campaign_due", "status", "next_run_at"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=20)  # coupon | new_product | notice
    content: dict = Field(sa_type=JSON)  # {"text", "product_id"?, "link"?}
    coupon_id: int | None = Field(default=None, foreign_key="coupon.id")
    audience: dict = Field(default_factory=dict, sa_type=JSON)
    sender: str = Field(default="advisor", max_length=10)  # advisor | brand
    schedule: dict | None = Field(default=None, sa_type=JSON)  # {"at"} | {"cron", "until"?}
    holdout_pct: int = 0
    mode: str = Field(default="direct", max_length=20)  # direct | clerk_assisted
    status: str = Field(default="draft", max_length=20)  # draft | scheduled | done | cancelled
    next_run_at: datetime | None = _ts(nullable=True)
    skipped_runs: int = 0  # fire times missed while the gateway was down (beyond the grace)
    created_at: datetime = _ts()


class CampaignRun(SQLModel, table=True):
    """One firing of a campaign, keyed by its scheduled time: a restart, a misfire or a second
    scheduler cannot create it twice."""

    __tablename__ = "campaign_run"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "scheduled_for", name="uq_run_time"),
                      sa.Index("ix_run_status", "status"))
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    scheduled_for: datetime = _ts()
    status: str = Field(default="pending", max_length=20)  # pending | materializing | dispatching | done | cancelled
    cursor: int = 0  # the last customer id materialized: a crashed run resumes after it
    counts: dict = Field(default_factory=dict, sa_type=JSON)  # audience, queued, excluded by rule …
    claimed_by: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _ts(nullable=True)
    started_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)


class Delivery(SQLModel, table=True):
    """A campaign run's decision for one customer: queued (with its outbox row) or excluded, why."""

    __table_args__ = (sa.UniqueConstraint("run_id", "customer_id", name="uq_delivery"),
                      sa.Index("ix_delivery_outbox", "outbox_id"))
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="campaign_run.id")
    customer_id: int = Field(foreign_key="customer.id")
    clerk_id: int | None = None
    status: str = Field(max_length=20)  # queued | excluded
    reason: str | None = Field(default=None, max_length=32)  # opted_out, quiet_hours, cap, holdout, no_channel …
    channel: str | None = Field(default=None, max_length=32)
    outbox_id: int | None = None
    created_at: datetime = _ts()


class TrackedLink(SQLModel, table=True):
    __tablename__ = "tracked_link"
    id: int | None = Field(default=None, primary_key=True)
    token: str = Field(max_length=32, unique=True)
    url: str = Field(max_length=1000)
    campaign_id: int | None = None
    run_id: int | None = None
    customer_id: int | None = None
    clerk_id: int | None = None
    created_at: datetime = _ts()
    clicked_at: datetime | None = _ts(nullable=True)  # the first click


class Order(SQLModel, table=True):
    """An order from a POS or a shop, idempotent by the brand's order id."""

    __tablename__ = "orders"
    __table_args__ = (sa.Index("ix_order_customer", "customer_id", "placed_at"),)
    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(max_length=128, unique=True)
    customer_id: int | None = Field(default=None, foreign_key="customer.id")
    channel: str = Field(max_length=20)  # store | cloud_store | flagship | other
    amount: Decimal = Field(sa_type=Money)
    currency: str = Field(default="CNY", max_length=3)
    store_id: int | None = Field(default=None, foreign_key="store.id")
    placed_at: datetime = _ts()
    received_at: datetime = _ts()
    body_hash: str = Field(max_length=64)  # a resend must match: same order id, same order
    clerk_id: int | None = None  # attributed advisor (at placed_at)
    attributed_store_id: int | None = None
    campaign_id: int | None = None  # last touch within the window
    unattributed: str | None = Field(default=None, max_length=40)  # why nobody was credited
    rule_version: str = Field(max_length=32)


class Refund(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("order_pk", "refunded_at", "amount", name="uq_refund"),)
    id: int | None = Field(default=None, primary_key=True)
    order_pk: int = Field(foreign_key="orders.id", index=True)
    amount: Decimal = Field(sa_type=Money)
    refunded_at: datetime = _ts()
    received_at: datetime = _ts()


class LedgerEntry(SQLModel, table=True):
    """Append-only: each line points at what caused it and the rules that priced it."""

    __tablename__ = "ledger_entry"
    __table_args__ = (sa.Index("ix_ledger_clerk", "clerk_id", "created_at"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=80, unique=True)  # order:<id> | refund:<id> | bounty:<customer> | clawback:<customer>
    kind: str = Field(max_length=20)
    clerk_id: int = Field(foreign_key="clerk.id")
    store_id: int | None = None
    customer_id: int = Field(foreign_key="customer.id", index=True)
    amount: Decimal = Field(sa_type=Money)
    order_id: str | None = Field(default=None, max_length=128)
    binding_id: int | None = None
    rule_version: str = Field(max_length=32)
    created_at: datetime = _ts()


class Interaction(SQLModel, table=True):
    """Append-only log of everything that happened; the source of truth for attribution."""

    __table_args__ = (
        sa.Index("ix_interaction_customer", "customer_id", "occurred_at"),
        # Reports aggregate by type over a period and group by clerk / store / customer: with those
        # columns in the index PostgreSQL answers from it alone (index-only scans).
        sa.Index("ix_interaction_type", "type", "occurred_at", "clerk_id", "store_id", "customer_id"),
        sa.Index("ix_interaction_clerk", "clerk_id", "occurred_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    type: str = Field(max_length=32)
    occurred_at: datetime = _ts()
    customer_id: int | None = None
    clerk_id: int | None = None
    store_id: int | None = None
    campaign_id: int | None = None
    payload: dict | None = Field(default=None, sa_type=JSON)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=20)  # admin | marketer | store_manager | clerk
    name: str | None = Field(default=None, max_length=100)
    store_id: int | None = Field(default=None, foreign_key="store.id")
    clerk_id: int | None = Field(default=None, foreign_key="clerk.id")
    created_at: datetime = _ts()
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class QueueEntry(SQLModel, table=True):
    """A customer with no advisor, waiting in a store's unassigned queue (store NULL: brand-wide)."""

    __tablename__ = "unassigned_queue"
    __table_args__ = (
        sa.Index(
            "uq_queue_open",
            "customer_id",
            unique=True,
            sqlite_where=sa.text("resolved_at IS NULL"),
            postgresql_where=sa.text("resolved_at IS NULL"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id")
    store_id: int | None = Field(default=None, foreign_key="store.id", index=True)
    reason: str = Field(max_length=64)
    created_at: datetime = _ts()
    notified_at: datetime | None = _ts(nullable=True)  # when the customer got the "advisor coming" reply
    resolved_at: datetime | None = _ts(nullable=True)


class ClerkFocus(SQLModel, table=True):
    """Who a clerk is talking to, as an append-only log: the last row per clerk is the clerk's
    current customer (bare text goes there). Appending instead of updating a column on the clerk's
    row means no message locks a row that every other message of the clerk needs too."""

    __tablename__ = "clerk_focus"
    __table_args__ = (sa.Index("ix_clerk_focus_latest", "clerk_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    clerk_id: int = Field(foreign_key="clerk.id")
    customer_id: int | None = None  # the current customer after this row
    previous_customer_id: int | None = None  # the one before, when a relay moved the focus
    kind: str = Field(max_length=8)  # shown | chosen | ask  (gateway/focus.py)
    at: datetime = _ts()
    held: dict | None = Field(default=None, sa_type=JSON)  # a question open: the clerk's held messages
    relay_key: str | None = Field(default=None, max_length=255)  # shown: the relay's outbox key (when it was seen)


class RateSlot(SQLModel, table=True):
    """An account's send pace shared by every process (GCRA: the theoretical arrival time of the
    next call), so N instances together stay under the platform's cap."""

    __tablename__ = "rate_slot"
    account: str = Field(max_length=64, primary_key=True)
    tat: datetime = _ts()


class SendLog(SQLModel, table=True):
    """Sends counted against a platform's per-recipient caps (WeCom 30 a minute per member,
    DingTalk's daily work-notice limits), shared by every process; purged after a day."""

    __tablename__ = "send_log"
    __table_args__ = (sa.Index("ix_send_log_key", "key", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200)
    at: datetime = _ts()
