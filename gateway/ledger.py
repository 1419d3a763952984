"""The commission ledger, computed: a pure function of one customer's bindings, orders and
refunds under the attribution rules. The database keeps the entries append-only; incremental
updates and a full rebuild both run this same function, so they agree to the fen by construction,
and the property tests compare it with a plain reference computation.

Rules (attribution config, versioned by `rule_version`):
  * commission: the clerk bound to the customer at `placed_at` earns amount × rate[channel];
    no binding then (or the customer was erased before) → no entry, the order is unattributed.
  * refund: reverses refund × the same rate, never more than the order's commission left
    (refunds taken in the order they arrived).
  * member bounty: the clerk of a customer's first binding earns `member_bounty`, once per
    customer (not for relationships brought in by `gateway import`, nor for one a merge carried
    over from another record, which earned its own); clawed back when that binding ends for a
    reason of the customer's (unbound, switched, erased…) within `bounty_clawback_days` — not
    when the clerk leaves (handover) or the record is merged.
  * merges: bindings and orders stay on the record they were made for, so a merge changes no
    line of either record; orders after it belong to the surviving record.
Money is Decimal; every amount is rounded once, to the fen, half up (`fen`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

FEN = Decimal("0.01")
# Binding end reasons that are not the customer leaving: the bounty stays.
KEEPS_BOUNTY = frozenset({"handover", "merged"})
# How a first binding began when nobody recruited the customer through the gateway: an import
# (migrated), or a merge (the advisor continues a relationship whose record earned the bounty).
NOT_RECRUITED = frozenset({"import", "merge"})


def fen(x: Decimal) -> Decimal:
    """The one rounding rule: to the fen, half up."""
    return Decimal(x).quantize(FEN, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Rules:
    rates: dict[str, Decimal]
    member_bounty: Decimal
    bounty_clawback_days: int

    @property
    def version(self) -> str:
        blob = json.dumps({"rates": {k: str(v) for k, v in sorted(self.rates.items())},
                           "bounty": str(self.member_bounty), "clawback": self.bounty_clawback_days}, sort_keys=True)
        return "v1-" + hashlib.sha256(blob.encode()).hexdigest()[:8]

    @staticmethod
    def of(config) -> Rules:
        a = config.attribution
        return Rules(dict(a.rates), Decimal(a.member_bounty), a.bounty_clawback_days)


@dataclass(frozen=True)
class BindingRec:  # a binding, as the ledger sees it
    id: int
    clerk_id: int
    store_id: int | None
    valid_from: datetime
    valid_to: datetime | None
    end_reason: str | None
    source: str = ""  # how it began: invite, contact, handover, import …


@dataclass(frozen=True)
class OrderRec:
    order_id: str
    amount: Decimal
    channel: str
    placed_at: datetime
    store_id: int | None


@dataclass(frozen=True)
class RefundRec:
    id: int
    order_id: str
    amount: Decimal
    refunded_at: datetime


@dataclass(frozen=True)
class Entry:
    source: str  # unique: what caused it (order:<id>, refund:<id>, bounty:<customer>, clawback:<customer>)
    kind: str  # commission | refund_reversal | bounty | bounty_clawback
    clerk_id: int
    store_id: int | None
    customer_id: int
    amount: Decimal
    order_id: str | None = None
    binding_id: int | None = None
    rule: str = ""


def bound_at(bindings: list[BindingRec], t: datetime) -> BindingRec | None:
    """The binding in force at `t` (valid_from ≤ t < valid_to)."""
    for b in bindings:
        if b.valid_from <= t and (b.valid_to is None or t < b.valid_to):
            return b
    return None


def entries(customer_id: int, bindings: list[BindingRec], orders: list[OrderRec], refunds: list[RefundRec], rules: Rules,
            erased_at: datetime | None = None) -> list[Entry]:
    """Everything the ledger holds for one customer."""
    out: list[Entry] = []
    v = rules.version
    ordered = sorted(bindings, key=lambda b: (b.valid_from, b.id))
    if ordered and rules.member_bounty > 0 and ordered[0].source not in NOT_RECRUITED:
        first = ordered[0]
        out.append(Entry(f"bounty:{customer_id}", "bounty", first.clerk_id, first.store_id, customer_id,
                         fen(rules.member_bounty), binding_id=first.id, rule=v))
        if (first.valid_to is not None and first.end_reason not in KEEPS_BOUNTY
                and first.valid_to - first.valid_from < timedelta(days=rules.bounty_clawback_days)):
            out.append(Entry(f"clawback:{customer_id}", "bounty_clawback", first.clerk_id, first.store_id, customer_id,
                             -fen(rules.member_bounty), binding_id=first.id, rule=v))
    by_order: dict[str, list[RefundRec]] = {}
    for r in refunds:
        by_order.setdefault(r.order_id, []).append(r)
    for o in sorted(orders, key=lambda o: (o.placed_at, o.order_id)):
        if erased_at is not None and o.placed_at >= erased_at:
            continue
        b = bound_at(ordered, o.placed_at)
        if b is None:
            continue
        commission = fen(o.amount * rules.rates.get(o.channel, Decimal(0)))
        store = o.store_id if o.store_id is not None else b.store_id
        out.append(Entry(f"order:{o.order_id}", "commission", b.clerk_id, store, customer_id, commission,
                         order_id=o.order_id, binding_id=b.id, rule=v))
        left = commission
        # In arrival order (refund ids follow it: the order's row lock serialises refunds). By
        # refunded_at, a refund that arrived late but was dated earlier recomputed the lines
        # already written: the cap moved to another line and the reversals passed the commission.
        for r in sorted(by_order.get(o.order_id, []), key=lambda r: r.id):
            back = min(left, fen(r.amount * rules.rates.get(o.channel, Decimal(0))))
            left -= back
            out.append(Entry(f"refund:{r.id}", "refund_reversal", b.clerk_id, store, customer_id, -back,
                             order_id=o.order_id, binding_id=b.id, rule=v))
    return out


def why_unattributed(bindings: list[BindingRec], order: OrderRec, erased_at: datetime | None) -> str | None:
    if erased_at is not None and order.placed_at >= erased_at:
        return "customer_erased"
    if bound_at(sorted(bindings, key=lambda b: (b.valid_from, b.id)), order.placed_at) is None:
        return "no_advisor_at_placed_at"
    return None
