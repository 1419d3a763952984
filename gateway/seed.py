"""First run: an empty database gets a sample store, clerk and invite, so a newcomer can play clerk
and customer in two browser tabs right away. Tokens are printed once and only hashed in storage."""

from __future__ import annotations

from sqlalchemy import func, select

from gateway import advisors
from gateway.models import ApiToken, Clerk, Store
from gateway.tokens import create_token


async def seed_if_empty(gw) -> dict | None:
    async with gw.db() as s:
        used = (await s.execute(select(func.count()).select_from(ApiToken))).scalar() or 0
        clerks = (await s.execute(select(func.count()).select_from(Clerk))).scalar() or 0
        if used or clerks:
            return None
        store = Store(name="示例门店 Demo Store", city="上海")
        s.add(store)
        await s.flush()
        clerk = Clerk(name="林小雨", display_name="小林", store_id=store.id, role="manager")
        s.add(clerk)
        await s.flush()
        _, admin = await create_token(s, "admin", name="first-run admin")
        _, clerk_token = await create_token(s, "clerk", clerk_id=clerk.id, name=clerk.display_name)
        invite = await advisors.create_invite(s, clerk.id, source="qr")
        await s.commit()
    base = gw.config.server.base_url()
    workbench = next((n for n, p in gw.clerk_accounts.items() if p == "workbench"), None)
    return {
        "admin_token": admin,
        "clerk_token": clerk_token,
        "workbench_url": f"{base}/{workbench}/?token={clerk_token}" if workbench else None,
        "invite_url": gw.invite_url(invite.code),
    }


def banner(info: dict) -> str:
    lines = [
        "",
        "First run — a sample store, clerk (小林) and invite were created. Tokens are shown only now:",
        f"  admin API token : {info['admin_token']}",
    ]
    if info["workbench_url"]:
        lines.append(f"  clerk workbench : {info['workbench_url']}")
    lines += [
        f"  customer invite : {info['invite_url']}   (open in another browser tab)",
        "",
    ]
    return "\n".join(lines)
