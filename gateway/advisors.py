"""Customers, their channel identities, advisors (bindings), handles and invites."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from gateway import labels
from gateway.model import Identity, Target
from gateway.models import Binding, Clerk, ClerkIdentity, Customer, Handle, HandleCounter, Invite, QueueEntry
from gateway.models import Identity as IdentityRow

SEEN_RESOLUTION = timedelta(minutes=1)
_INVITE_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o/1/l/i: read aloud in a store


def phone_hash(key: str, phone: str) -> str:
    """A keyed hash: an 11-digit phone is too easy to brute-force from a plain one."""
    import hmac

    digits = phone.lstrip("+").removeprefix("86") if len(phone.lstrip("+")) == 13 else phone.lstrip("+")
    return hmac.new(key.encode(), digits.encode(), hashlib.sha256).hexdigest()


def customer_name(customer: Customer | None, identity: IdentityRow | None = None) -> str:
    """The name a clerk sees, always cleaned (names stored before cleaning, or set by an admin,
    may hold label marks): see gateway/labels.py."""
    if customer is not None and customer.erased_at is not None:
        return labels.ERASED_NAME
    if customer is not None and (name := labels.clean_name(customer.name)):
        return name
    if identity is not None and identity.profile and (name := labels.clean_name(identity.profile.get("name"))):
        return name
    return f"顾客{customer.id}" if customer is not None else "顾客"


def clean_profile(profile: dict | None) -> dict:
    """A platform profile as stored: the customer-chosen name cleaned (dropped if nothing is left)."""
    profile = dict(profile or {})
    if "name" in profile:
        name = labels.clean_name(profile.pop("name"))
        if name:
            profile["name"] = name
    return profile


async def resolve_customer(session, ident: Identity, profile: dict, now: datetime) -> tuple[Customer, IdentityRow]:
    """Find or create the customer behind a channel identity. The UNIQUE index settles races."""
    q = select(IdentityRow, Customer).join(Customer, Customer.id == IdentityRow.customer_id).where(
        IdentityRow.platform == ident.platform,
        IdentityRow.account == ident.account,
        IdentityRow.external_id == ident.external_id,
    )
    row = (await session.exec(q)).first()
    profile = clean_profile(profile)
    name = profile.get("name")
    if row is not None:
        identity, customer = row
        if identity.last_seen_at is None or now - identity.last_seen_at > SEEN_RESOLUTION:
            identity.last_seen_at = now  # minute resolution: not a write on every message
        if profile and any((identity.profile or {}).get(k) != v for k, v in profile.items()):
            identity.profile = {**(identity.profile or {}), **profile}
        if profile.get("unionid") and identity.unionid != profile["unionid"]:
            identity.unionid = profile["unionid"]
            other = await _by_unionid(session, identity.unionid, not_customer=customer.id)
            if other is not None:  # the same person reached us before on another channel
                keep, gone = (other, customer) if other.id < customer.id else (customer, other)
                customer = await merge_customers(session, keep, gone, now, "same unionid")
        if name and not customer.name and customer.erased_at is None:
            customer.name = name
        if customer.last_identity_id != identity.id:
            customer.last_identity_id = identity.id
        return customer, identity
    known = await _by_unionid(session, profile["unionid"]) if profile.get("unionid") else None
    try:
        async with session.begin_nested():
            customer = known or Customer(name=name, created_at=now)
            session.add(customer)
            await session.flush()
            identity = IdentityRow(
                customer_id=customer.id,
                platform=ident.platform,
                account=ident.account,
                external_id=ident.external_id,
                unionid=(profile or {}).get("unionid"),
                profile=profile or {},
                created_at=now,
                last_seen_at=now,
            )
            session.add(identity)
            await session.flush()
            customer.last_identity_id = identity.id
    except IntegrityError:  # another request created it first
        return await resolve_customer(session, ident, profile, now)
    return customer, identity


async def open_binding(session, customer_id: int) -> tuple[Binding, Clerk] | None:
    q = (
        select(Binding, Clerk)
        .join(Clerk, Clerk.id == Binding.clerk_id)
        .where(Binding.customer_id == customer_id, Binding.valid_to.is_(None))
    )
    return (await session.exec(q)).first()


def workbench_clerk_id(platform: str, external_id: str) -> int | None:
    """The workbench's user id is the clerk id (it has no ClerkIdentity rows)."""
    return int(external_id) if platform == "workbench" and external_id.isdigit() else None


async def clerk_by_identity(session, ident: Identity) -> Clerk | None:
    if ident.platform == "workbench":
        cid = workbench_clerk_id(ident.platform, ident.external_id)
        return await session.get(Clerk, cid) if cid is not None else None
    q = select(Clerk).join(ClerkIdentity, ClerkIdentity.clerk_id == Clerk.id).where(
        ClerkIdentity.platform == ident.platform,
        ClerkIdentity.account == ident.account,
        ClerkIdentity.external_id == ident.external_id,
    )
    return (await session.exec(q)).first()


def pick_clerk_target(clerk_id: int, last_work_account: str | None, work_ids: list[Identity],
                      clerk_accounts: dict[str, str]) -> Target | None:
    """Where to reach a clerk: the work IM they last used, else their first identity, else the
    workbench. `work_ids` are the clerk's work-IM identities, oldest first; `clerk_accounts` maps
    the configured clerk-side account names to their platform."""
    by_account = {i.account: i for i in work_ids if i.account in clerk_accounts}
    workbench = [a for a, p in clerk_accounts.items() if p == "workbench"]
    order = ([last_work_account] if last_work_account else []) + [i.account for i in work_ids] + workbench
    for account in order:
        if account in by_account:
            return Target(by_account[account], clerk_id=clerk_id)
        if account in workbench:
            return Target(Identity("workbench", account, str(clerk_id)), clerk_id=clerk_id)
    return None


async def clerk_target(session, clerk: Clerk, clerk_accounts: dict[str, str]) -> Target | None:
    rows = (await session.exec(select(ClerkIdentity).where(ClerkIdentity.clerk_id == clerk.id)
                               .order_by(ClerkIdentity.id))).all()
    return pick_clerk_target(clerk.id, clerk.last_work_account,
                             [Identity(r.platform, r.account, r.external_id) for r in rows], clerk_accounts)


async def customer_target(session, customer: Customer, clerk: Clerk | None = None) -> Target | None:
    """The customer's channel: the identity they last wrote from."""
    ident = await session.get(IdentityRow, customer.last_identity_id) if customer.last_identity_id else None
    if ident is None:
        ident = (
            await session.exec(
                select(IdentityRow).where(IdentityRow.customer_id == customer.id).order_by(IdentityRow.id.desc())
            )
        ).first()
    return await target_for(session, customer, ident, clerk) if ident is not None else None


def customer_target_on(customer_id: int, ident: Identity, clerk_id: int | None,
                       advisor_work_ids: list[Identity] = ()) -> Target:
    """A target on one of the customer's identities. With the advisor given, their id on that same
    account rides along as the `advisor` hint (WeCom sends to a contact as a member)."""
    own = next((w.external_id for w in advisor_work_ids if w.account == ident.account), None)
    return Target(ident, customer_id=customer_id, clerk_id=clerk_id, hints={"advisor": own} if own else {})


async def target_for(session, customer: Customer, ident: IdentityRow, clerk: Clerk | None = None) -> Target:
    work_ids = []
    if clerk is not None:
        work_ids = [Identity(r.platform, r.account, r.external_id) for r in (await session.exec(
            select(ClerkIdentity).where(ClerkIdentity.clerk_id == clerk.id, ClerkIdentity.account == ident.account)
        )).all()]
    return customer_target_on(customer.id, Identity(ident.platform, ident.account, ident.external_id),
                              clerk.id if clerk else None, work_ids)


async def handle_for(session, clerk_id: int, customer_id: int) -> int:
    """The clerk's stable `#n` for this customer, allocated on first use."""
    q = select(Handle.n).where(Handle.clerk_id == clerk_id, Handle.customer_id == customer_id)
    n = (await session.exec(q)).first()
    if n is not None:
        return n
    if session.bind.dialect.name == "postgresql":
        n = await _next_handle(session.bind, clerk_id)
        try:
            async with session.begin_nested():
                session.add(Handle(clerk_id=clerk_id, customer_id=customer_id, n=n))
                await session.flush()
            return n
        except IntegrityError:  # another instance gave this customer a number meanwhile (this one stays unused)
            n = (await session.exec(q)).first()
            if n is not None:
                return n
            raise
    for _ in range(5):  # SQLite: one writer, nobody else holds a number we could wait for
        top = (await session.exec(select(func.max(Handle.n)).where(Handle.clerk_id == clerk_id))).first()
        try:
            async with session.begin_nested():
                session.add(Handle(clerk_id=clerk_id, customer_id=customer_id, n=(top or 0) + 1))
                await session.flush()
            return (top or 0) + 1
        except IntegrityError:
            n = (await session.exec(q)).first()
            if n is not None:
                return n
    raise RuntimeError("could not allocate a customer handle")


async def _next_handle(engine, clerk_id: int) -> int:
    """The clerk's next number, from a transaction of its own that commits at once: the batch
    that asked never holds it, so batches binding customers to the same clerks in different
    orders do not wait for each other (each waits, at most, for one such short transaction).
    A number taken by a batch that then rolls back is skipped: numbers only need to be unique."""
    hc, h = HandleCounter.__table__, Handle.__table__
    first = select(func.coalesce(func.max(h.c.n), 0) + 1).where(h.c.clerk_id == clerk_id).scalar_subquery()
    stmt = (pg_insert(hc).values(clerk_id=clerk_id, last_n=first)
            .on_conflict_do_update(index_elements=[hc.c.clerk_id], set_={"last_n": hc.c.last_n + 1})
            .returning(hc.c.last_n))
    async with engine.begin() as conn:
        return (await conn.execute(stmt)).scalar_one()


async def customer_by_handle(session, clerk_id: int, n: int) -> Customer | None:
    q = select(Customer).join(Handle, Handle.customer_id == Customer.id).where(Handle.clerk_id == clerk_id, Handle.n == n)
    return (await session.exec(q)).first()


async def create_invite(session, clerk_id: int, *, source: str | None = None, campaign_id: int | None = None) -> Invite:
    for _ in range(5):
        code = "".join(secrets.choice(_INVITE_ALPHABET) for _ in range(8))
        try:
            async with session.begin_nested():
                invite = Invite(code=code, clerk_id=clerk_id, source=source, campaign_id=campaign_id)
                session.add(invite)
                await session.flush()
            return invite
        except IntegrityError:
            continue
    raise RuntimeError("could not allocate an invite code")


@dataclass
class BindOutcome:
    status: str  # bound | already_bound | conflict | ask | invite_not_found | clerk_unavailable
    clerk: Clerk | None = None
    binding: Binding | None = None
    previous: Binding | None = None


async def bind(session, customer: Customer, invite_code: str | None, *, policy: str, now: datetime,
               advisor: Clerk | None = None, switch: bool = False) -> BindOutcome:
    """Bind a customer to the invite's clerk (or, without an invite, to `advisor`: a WeCom contact
    the clerk added directly) under the binding policy. Never rewrites history.

    A bound customer meeting another clerk: keep_first keeps the advisor ("conflict"); latest_wins
    switches; ask_customer answers "ask" unless the customer already said yes (`switch`)."""
    invite = None
    if invite_code:
        invite = (await session.exec(select(Invite).where(Invite.code == invite_code))).first()
        if invite is None:
            return BindOutcome("invite_not_found")
        clerk = await session.get(Clerk, invite.clerk_id)
    elif advisor is not None:
        clerk = advisor
    else:
        return BindOutcome("invite_not_found")
    if clerk is None or clerk.status != "active":
        return BindOutcome("clerk_unavailable", clerk=clerk)
    current = await open_binding(session, customer.id)
    previous = None
    if current is not None:
        binding, bound_clerk = current
        if bound_clerk.id == clerk.id:
            return BindOutcome("already_bound", clerk=clerk, binding=binding)
        if policy == "ask_customer" and not switch:
            return BindOutcome("ask", clerk=clerk, binding=binding, previous=binding)
        if policy not in ("latest_wins", "ask_customer"):
            return BindOutcome("conflict", clerk=bound_clerk, binding=binding)
        await close_binding(session, binding, now, "customer_switched" if switch else "rebound")
        previous = binding
    source = ("invite:" + invite.source if invite.source else "invite") if invite else "contact"
    source = f"switch:{source}" if switch else source
    new = await open_new_binding(session, customer, clerk, now, source, invite.id if invite else None)
    return BindOutcome("bound", clerk=clerk, binding=new, previous=previous)


async def close_binding(session, binding: Binding, at: datetime, reason: str) -> None:
    await session.execute(update(Binding).where(Binding.id == binding.id).values(valid_to=at, end_reason=reason))
    binding.valid_to, binding.end_reason = at, reason


async def open_new_binding(session, customer: Customer, clerk: Clerk, at: datetime, source: str,
                           invite_id: int | None = None, served_since: datetime | None = None) -> Binding:
    """The customer's new advisor from `at`; any wait in the unassigned queue is over."""
    new = Binding(customer_id=customer.id, clerk_id=clerk.id, store_id=clerk.store_id, valid_from=at,
                  source=source, invite_id=invite_id, served_since=served_since)
    session.add(new)
    customer.store_id = clerk.store_id
    await session.flush()
    await session.execute(
        update(QueueEntry)
        .where(QueueEntry.customer_id == customer.id, QueueEntry.resolved_at.is_(None))
        .values(resolved_at=at)
    )
    return new


async def enqueue_unassigned(session, customer: Customer, reason: str, now: datetime) -> tuple[QueueEntry, bool]:
    """Put the customer in their store's unassigned queue. Returns (entry, newly queued)."""
    q = select(QueueEntry).where(QueueEntry.customer_id == customer.id, QueueEntry.resolved_at.is_(None))
    entry = (await session.exec(q)).first()
    if entry is not None:
        return entry, False
    try:
        async with session.begin_nested():
            entry = QueueEntry(customer_id=customer.id, store_id=customer.store_id, reason=reason, created_at=now)
            session.add(entry)
            await session.flush()
    except IntegrityError:  # queued by a concurrent event
        return (await session.exec(q)).one(), False
    return entry, True


async def clerk_customers(session, clerk_id: int, limit: int = 500) -> list[tuple[Customer, int | None, datetime | None]]:
    """The clerk's bound customers with their #n and last message time, most recent first."""
    from gateway.models import ChatMessage

    last = (
        select(ChatMessage.customer_id, func.max(ChatMessage.created_at).label("at"))
        .where(ChatMessage.side == "customer", ChatMessage.direction == "in", ChatMessage.clerk_id == clerk_id)
        .group_by(ChatMessage.customer_id)
        .subquery()
    )
    q = (
        select(Customer, Handle.n, last.c.at)
        .join(Binding, (Binding.customer_id == Customer.id) & Binding.valid_to.is_(None))
        .join(Handle, (Handle.customer_id == Customer.id) & (Handle.clerk_id == clerk_id), isouter=True)
        .join(last, last.c.customer_id == Customer.id, isouter=True)
        .where(Binding.clerk_id == clerk_id)
        .order_by(last.c.at.desc().nulls_last(), Customer.id)
        .limit(limit)
    )
    return list((await session.exec(q)).all())


async def merge_customers(session, keep: Customer, gone: Customer, now: datetime, why: str) -> Customer:
    """One person, two records (the same unionid on two channels, a verified phone, a link from
    the brand's member system): identities, messages, interactions, handles, queue entries,
    transfers and focus move to `keep`, so the person reads as one.

    Bindings and orders stay on the record they were made for: each record's ledger is a pure
    function of its own bindings, orders and refunds, and moving the bindings made lines already
    written (bounties, commissions) recompute differently. Orders after the merge reach `keep`
    (through the moved identities, or `merged_into_id`). The advisor who has served the person
    longest continues on `keep`: `gone`'s open binding ends now ("merged"); when its advisor is the
    one who stays, `keep`'s ends too and `keep` gets that advisor from now (source "merge", which
    earns no bounty). A merge logs `merged`, never `bound`: nobody was recruited."""
    from gateway.interactions import log_interaction
    from gateway.models import ChatMessage, ClerkFocus, Interaction, Outbox, Transfer

    kb, gb = await open_binding(session, keep.id), await open_binding(session, gone.id)
    keep_handles = set((await session.exec(select(Handle.clerk_id).where(Handle.customer_id == keep.id))).all())
    if keep_handles:
        await session.execute(delete(Handle).where(Handle.customer_id == gone.id, Handle.clerk_id.in_(keep_handles)))
    if (await session.exec(select(QueueEntry.id).where(QueueEntry.customer_id == keep.id,
                                                       QueueEntry.resolved_at.is_(None)))).first():
        await session.execute(update(QueueEntry).where(QueueEntry.customer_id == gone.id,
                                                       QueueEntry.resolved_at.is_(None)).values(resolved_at=now))
    for model in (IdentityRow, Handle, QueueEntry, ChatMessage, Interaction, Outbox, Transfer):
        await session.execute(update(model).where(model.customer_id == gone.id).values(customer_id=keep.id))
    for col in (ClerkFocus.customer_id, ClerkFocus.previous_customer_id):
        await session.execute(update(ClerkFocus).where(col == gone.id).values({col.key: keep.id}))
    # Records merged into `gone` earlier now live in `keep` too (one hop from any record to the person).
    await session.execute(update(Customer).where(Customer.merged_into_id == gone.id).values(merged_into_id=keep.id))
    continued = await _continue_advisor(session, keep, kb, gb, now)
    if kb is not None and continued is None:  # keep's advisor stays: nobody is waiting for one
        await session.execute(update(QueueEntry).where(QueueEntry.customer_id == keep.id,
                                                       QueueEntry.resolved_at.is_(None)).values(resolved_at=now))
    keep.name = keep.name or gone.name
    keep.phone_hash = keep.phone_hash or gone.phone_hash
    keep.store_id = keep.store_id or gone.store_id
    keep.tags = sorted(set(keep.tags or []) | set(gone.tags or [])) or None
    if gone.consent_at and (keep.consent_at is None or gone.consent_at < keep.consent_at):
        keep.consent_at, keep.consent_version = gone.consent_at, gone.consent_version
    if gone.opted_out_at and not keep.opted_out_at:  # an opt-out on either channel stands
        keep.opted_out_at = gone.opted_out_at
    keep.last_identity_id = keep.last_identity_id or gone.last_identity_id
    gone.merged_into_id, gone.last_identity_id = keep.id, None
    await session.flush()
    await log_interaction(session, "merged", occurred_at=now, customer_id=keep.id,
                          clerk_id=continued.clerk_id if continued else None,
                          payload={"merged_customer_id": gone.id, "why": why,
                                   **({"binding_id": continued.id} if continued else {})})
    return keep


def serving_since(binding: Binding) -> datetime:
    """Since when this binding's advisor has served the person (a binding opened by a merge
    continues one of the merged record)."""
    return binding.served_since or binding.valid_from


async def _continue_advisor(session, keep: Customer, kb: tuple[Binding, Clerk] | None,
                            gb: tuple[Binding, Clerk] | None, now: datetime) -> Binding | None:
    """End `gone`'s open binding; when its advisor served first, they continue on `keep` from now
    (the binding opened, or None)."""
    if gb is None:
        return None
    binding, clerk = gb
    await close_binding(session, binding, now, "merged")
    if kb is not None and serving_since(kb[0]) <= serving_since(binding):
        return None
    if kb is not None:
        await close_binding(session, kb[0], now, "merged")
    return await open_new_binding(session, keep, clerk, now, "merge", served_since=serving_since(binding))


async def merged_ids(session, customer_id: int) -> list[int]:
    """The records merged into this one. Merges re-point earlier ones, so one hop suffices; the
    loop also follows chains left by merges made before they did."""
    found: list[int] = []
    frontier = [customer_id]
    while frontier and len(found) < 1000:
        frontier = [i for i in (await session.exec(select(Customer.id).where(Customer.merged_into_id.in_(frontier))
                                                   .order_by(Customer.id))).all() if i not in found]
        found += frontier
    return found


async def binding_history(session, customer_id: int) -> list[Binding]:
    """The person's advisors over time: this record's bindings and those of the records merged
    into it (which stay on their own record, for the ledger), oldest first."""
    ids = [customer_id, *await merged_ids(session, customer_id)]
    return list((await session.exec(select(Binding).where(Binding.customer_id.in_(ids))
                                     .order_by(Binding.valid_from, Binding.id))).all())


async def _by_unionid(session, unionid: str, not_customer: int | None = None) -> Customer | None:
    q = (select(Customer).join(IdentityRow, IdentityRow.customer_id == Customer.id)
         .where(IdentityRow.unionid == unionid, Customer.merged_into_id.is_(None)))
    if not_customer is not None:
        q = q.where(Customer.id != not_customer)
    return (await session.exec(q.order_by(Customer.id))).first()
