"""Admin API for customers: reading, changing, linking and transferring them, and privacy
(export, erasure, the audit log). Registered in the same ROUTES table as the rest of the API."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from sqlmodel import select

from gateway import advisors, handover, privacy
from gateway.api import ALL, ApiError, Req, _dump, _In, _page, route
from gateway.interactions import log_interaction
from gateway.models import AuditEntry, Binding, Clerk, Customer, Identity, Interaction, QueueEntry


class CustomerPatch(_In):
    name: str | None = Field(None, min_length=1, max_length=200)
    phone: str | None = Field(None, pattern=r"^\+?\d{6,20}$")  # verified by the brand's member system
    tags: list[Annotated[str, Field(min_length=1, max_length=32)]] | None = Field(None, max_length=50)


class IdentityLink(_In):
    platform: str = Field(min_length=1, max_length=32)
    account: str = Field(min_length=1, max_length=64)
    external_id: str = Field(min_length=1, max_length=128)


class TransferIn(_In):
    clerk_id: int


# -- customers ---------------------------------------------------------------------------------------


@route("GET", "/customers", roles=ALL)
async def customer_list(q: Req):
    """List customers (?store_id=, ?clerk_id= for the current advisor, ?q= name)."""
    stmt = select(Customer).where(Customer.id > q.query_int("after", 0)).order_by(Customer.id).limit(q.limit())
    store_id = q.who.store_id if q.who.role == "store_manager" else q.query_int("store_id")
    if store_id is not None:
        stmt = stmt.where(Customer.store_id == store_id)
    if (clerk_id := q.query_int("clerk_id")) is not None:
        stmt = stmt.join(Binding, (Binding.customer_id == Customer.id) & Binding.valid_to.is_(None)).where(
            Binding.clerk_id == clerk_id)
    if q.request.query.get("q"):
        stmt = stmt.where(Customer.name.contains(q.request.query["q"], autoescape=True))
    async with q.gw.db() as s:
        rows = (await s.exec(stmt)).all()
        advisors_ = dict((await s.execute(  # the current advisor of each, in one query
            select(Binding.customer_id, Clerk).join(Clerk, Clerk.id == Binding.clerk_id)
            .where(Binding.customer_id.in_([r.id for r in rows]), Binding.valid_to.is_(None)))).all())
    return _page([{**_dump(r, q.gw.tz), "advisor": {"clerk_id": a.id, "name": a.display_name} if (a := advisors_.get(r.id))
                   else None} for r in rows], q.limit())


async def _customer(s, q: Req) -> Customer:
    c = await s.get(Customer, q.param("customer_id"))
    if c is None or c.merged_into_id is not None:
        raise ApiError(404, "not_found", "no such customer" if c is None else
                       f"merged into customer {c.merged_into_id}")
    q.scoped_store(c.store_id)
    return c


@route("GET", "/customers/{customer_id}", roles=ALL)
async def customer_get(q: Req):
    """A customer with identities, binding history (of the records merged into it too: each
    binding names its record) and recent interactions."""
    async with q.gw.db() as s:
        c = await _customer(s, q)
        idents = (await s.exec(select(Identity).where(Identity.customer_id == c.id))).all()
        bindings = await advisors.binding_history(s, c.id)  # records merged into it too
        history = (await s.exec(select(Interaction).where(Interaction.customer_id == c.id)
                                .order_by(Interaction.id.desc()).limit(100))).all()
        queued = (await s.exec(select(QueueEntry).where(QueueEntry.customer_id == c.id,
                                                        QueueEntry.resolved_at.is_(None)))).first()
    tz = q.gw.tz
    return {**_dump(c, tz), "identities": [_dump(i, tz) for i in idents],
            "bindings": [_dump(b, tz) for b in bindings], "history": [_dump(i, tz) for i in history],
            "unassigned": _dump(queued, tz) if queued else None}


@route("PATCH", "/customers/{customer_id}", roles=("admin", "store_manager"), body=CustomerPatch)
async def customer_patch(q: Req):
    """Name, tags, and a phone verified by the brand's member system (another record with the same
    phone is the same person: the two are merged; by a store manager only within their store)."""
    async with q.gw.db() as s:
        c = await _customer(s, q)
        if c.erased_at is not None:
            raise ApiError(409, "conflict", "this customer was erased")
        data = q.body.model_dump(exclude_unset=True)
        now = q.gw.clock.now()
        if "name" in data:
            c.name = data["name"]
        if "tags" in data:
            old = set(c.tags or [])
            c.tags = sorted(set(data["tags"] or [])) or None
            await log_interaction(s, "tagged", occurred_at=now, customer_id=c.id, store_id=c.store_id,
                                  payload={"added": sorted(set(c.tags or []) - old), "removed": sorted(old - set(c.tags or []))})
        if data.get("phone"):
            key = q.gw.config.policies.phone_hash_key
            if not key:
                raise ApiError(422, "invalid", "set policies.phone_hash_key to record phone numbers", "phone")
            unchanged = c.phone_hash == (phone := advisors.phone_hash(key, data["phone"]))
            c.phone_hash = phone
            same = (await s.exec(select(Customer).where(Customer.phone_hash == c.phone_hash, Customer.id != c.id,
                                                        Customer.merged_into_id.is_(None))
                                 .order_by(Customer.id).limit(20))).all()
            mergeable = [o for o in same if await _may_merge(s, q, o)]
            if mergeable:
                other = mergeable[0]
                keep, gone = (other, c) if other.id < c.id else (c, other)
                c = await advisors.merge_customers(s, keep, gone, now, "same phone")
            elif same and not unchanged:  # logged once, not on every save
                other = same[0]
                # A store manager gave the phone of a record outside their store (or of no store).
                # Merging moved that customer, their binding and orders into the manager's store;
                # refusing would tell them the phone exists elsewhere. So the phone is recorded
                # and the answer is exactly that for a phone nobody has; an admin sees the pair
                # (`merge_held`, on no customer and no store, so no store manager reads it) and
                # merges it with the same PATCH.
                await log_interaction(s, "merge_held", occurred_at=now, payload={
                    "customer_ids": sorted([c.id, other.id]), "why": "same phone",
                    "by": f"{q.who.role}:{q.who.token_id}"})
        await s.commit()
        return _dump(c, q.gw.tz)


async def _may_merge(s, q: Req, other: Customer) -> bool:
    """Whether the caller may fold `other` into a record of theirs: an admin always; a store
    manager only a record of their own store whose current advisor (if any) works there too."""
    if q.who.role != "store_manager":
        return True
    if other.store_id != q.who.store_id:
        return False
    current = await advisors.open_binding(s, other.id)
    return current is None or current[0].store_id == q.who.store_id


@route("POST", "/customers/{customer_id}/identities", roles=("admin",), body=IdentityLink, status=201)
async def customer_link(q: Req):
    """Link a channel identity to this customer (from the brand's member system); a record that
    already holds it is merged in, histories kept."""
    b = q.body
    if b.account not in q.gw.adapters or q.gw.adapters[b.account].platform != b.platform:
        raise ApiError(422, "invalid", f"{b.platform}/{b.account} is not a configured account", "account")
    async with q.gw.db() as s:
        c = await _customer(s, q)
        now = q.gw.clock.now()
        row = (await s.exec(select(Identity).where(Identity.platform == b.platform, Identity.account == b.account,
                                                   Identity.external_id == b.external_id))).first()
        if row is None:
            s.add(Identity(customer_id=c.id, platform=b.platform, account=b.account, external_id=b.external_id,
                           profile={}, created_at=now))
        elif row.customer_id != c.id:
            other = await s.get(Customer, row.customer_id)
            keep, gone = (other, c) if other.id < c.id else (c, other)
            c = await advisors.merge_customers(s, keep, gone, now, "linked by the brand")
        await s.commit()
        idents = (await s.exec(select(Identity).where(Identity.customer_id == c.id))).all()
        return {**_dump(c, q.gw.tz), "identities": [_dump(i, q.gw.tz) for i in idents]}


@route("GET", "/customers/{customer_id}/export", roles=("admin",))
async def customer_export(q: Req):
    """Everything held about one customer (PIPL access request)."""
    async with q.gw.db() as s:
        c = await s.get(Customer, q.param("customer_id"))
        if c is None:
            raise ApiError(404, "not_found", "no such customer")
        return await privacy.export(s, c, q.gw.tz)


@route("DELETE", "/customers/{customer_id}", roles=("admin",))
async def customer_erase(q: Req):
    """Erase the person (names, phone, message text, platform ids); the anonymous record stays."""
    async with q.gw.db() as s:
        c = await s.get(Customer, q.param("customer_id"))
        if c is None:
            raise ApiError(404, "not_found", "no such customer")
        out = await privacy.erase(s, c, q.gw.clock.now(), by=f"{q.who.role}:{q.who.token_id}")
        await s.commit()
    return out


@route("GET", "/audit", roles=("admin",))
async def audit_list(q: Req):
    """The admin audit log, newest first (?before=<id>)."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(q.limit())
    if (before := q.query_int("before")) is not None:
        stmt = stmt.where(AuditEntry.id < before)
    async with q.gw.db() as s:
        rows = (await s.exec(stmt)).all()
    return _page([_dump(r, q.gw.tz) for r in rows], q.limit())


@route("POST", "/customers/{customer_id}/transfer", roles=("admin", "store_manager"), body=TransferIn)
async def customer_transfer(q: Req):
    """Give a customer another advisor (through the platform when it holds the contact), or assign a
    customer who has none (the unassigned queue)."""
    async with q.gw.db() as s:
        c = await s.get(Customer, q.param("customer_id"))
        if c is None:
            raise ApiError(404, "not_found", "no such customer")
        q.scoped_store(c.store_id)
        to = await s.get(Clerk, q.body.clerk_id)
        if to is None or to.status != "active":
            raise ApiError(422, "invalid", "no such active clerk", "clerk_id")
        q.scoped_store(to.store_id)
        current = await advisors.open_binding(s, c.id)
        if current is None:  # waiting in the unassigned queue (or never bound): assign
            now = q.gw.clock.now()
            new = await advisors.open_new_binding(s, c, to, now, "assigned")
            await log_interaction(s, "bound", occurred_at=now, customer_id=c.id, clerk_id=to.id, store_id=to.store_id,
                                  payload={"source": "assigned"})
            await handover.introduce(s, q.gw, c, to, new)
            await s.commit()
            q.gw.outbox.kick()
            return {"customer_id": c.id, "status": "assigned"}
        if current[1].id == to.id:
            raise ApiError(409, "conflict", "already this clerk's customer")
        outcome = await handover.hand_one(s, q.gw, current[0], c, current[1], to, now=q.gw.clock.now(),
                                          resigned=False, reason="transfer (admin)")
        await s.commit()
    q.gw.outbox.kick()
    return {"customer_id": c.id, "status": outcome}


@route("GET", "/queue", roles=ALL)
async def queue_list(q: Req):
    """Customers waiting for an advisor (?store_id=; a store manager sees their store's), oldest first."""
    stmt = (select(QueueEntry, Customer.name).join(Customer, Customer.id == QueueEntry.customer_id)
            .where(QueueEntry.resolved_at.is_(None), QueueEntry.id > q.query_int("after", 0))
            .order_by(QueueEntry.id).limit(q.limit()))
    store_id = q.who.store_id if q.who.role == "store_manager" else q.query_int("store_id")
    if store_id is not None:
        stmt = stmt.where(QueueEntry.store_id == store_id)
    async with q.gw.db() as s:
        rows = (await s.execute(stmt)).all()
    return _page([{**_dump(e, q.gw.tz), "customer_name": name} for e, name in rows], q.limit())
