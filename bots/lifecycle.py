"""A clerk leaves (an org event from DingTalk, later WeCom): mark them left and make sure none of
their customers is lost — each waits in the store's unassigned queue until the handover policy
(successor / least loaded / manager) reassigns them. Bindings stay open until then: history is
only ever closed by the handover itself."""

from __future__ import annotations

from sqlmodel import select

from gateway import advisors
from gateway.models import Binding, Customer
from gateway.router import Ctx, Router

router = Router("lifecycle")


@router.on("clerk_left", side="clerk")
async def clerk_left(ctx: Ctx):
    clerk = ctx.clerk
    if clerk is None or clerk.status == "left":
        return None  # unknown user or already handled: nothing to do
    clerk.status, clerk.left_at = "left", ctx.now()
    rows = (
        await ctx.session.exec(
            select(Customer).join(Binding, Binding.customer_id == Customer.id)
            .where(Binding.clerk_id == clerk.id, Binding.valid_to.is_(None))
        )
    ).all()
    for customer in rows:
        if (await advisors.enqueue_unassigned(ctx.session, customer, "advisor_left", ctx.now()))[1]:
            await ctx.log("handover", customer_id=customer.id, clerk_id=clerk.id, store_id=clerk.store_id,
                          payload={"status": "queued", "reason": ctx.event.payload.get("reason", "left"),
                                   "source": ctx.event.sender.platform})
    return None
