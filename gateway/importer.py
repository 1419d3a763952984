"""`gateway import clerks|stores|customers FILE.csv`: bulk upsert from CSV with a per-row report.

The file is read twice, streaming both times: a first pass checks the header and that the whole
file is readable UTF-8 CSV (so a file-level problem stops the import before anything is written),
the second imports. Rows are validated with the admin API's own models (StoreIn, ClerkIn,
CustomerPatch) and the API's work-id checks, so the CLI and the API cannot disagree.

Rows go in in batches of BATCH rows, one transaction per batch and a savepoint per row: a bad row
rolls back only itself. Should a batch's commit fail, its good rows are retried one by one.
With dry_run every batch is rolled back instead of committed and the same report is printed.

Upsert keys (importing the same file twice creates nothing the second time):
  stores     by name
  clerks     by a work id (account=user_id) if one matches, else by (name, store)
  customers  by phone (the keyed phone hash the product links on) or unionid
Empty cells leave the stored value as it is.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from pydantic import BaseModel, ValidationError
from sqlmodel import select

from gateway import advisors, csvsafe, handover
from gateway.api import ApiError, ClerkIn, StoreIn, _set_work_ids
from gateway.api_customers import CustomerPatch
from gateway.caches import HOURS
from gateway.interactions import log_interaction
from gateway.model import Identity
from gateway.models import AuditEntry, Clerk, ClerkIdentity, Customer, Store

BATCH = 500
PROGRESS_EVERY = 1000
KINDS = ("stores", "clerks", "customers")
COLUMNS = {
    "stores": ("name", "city", "lat", "lng", "opening_hours"),
    "clerks": ("name", "display_name", "store", "role", "work_ids", "status"),
    "customers": ("name", "phone", "store", "tags", "clerk", "unionid"),
}
REQUIRED = {"stores": ("name",), "clerks": ("name", "display_name", "store"), "customers": ()}
ERROR_COLUMN = "error"  # added to the --errors file; ignored on the way in, so that file can be re-imported


class FileError(Exception):
    """The file cannot be imported at all (exit 2); nothing was written."""


class RowFailed(Exception):
    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{c}: {r}" for c, r in problems))
        self.problems = problems


@dataclass
class Result:
    kind: str
    file: str
    dry_run: bool = False
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    left: int = 0  # clerks who left through this import
    handover: Counter = field(default_factory=Counter)  # their customers, by outcome (moved, queued, …)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        text = f"created {self.created}, updated {self.updated}, failed {self.failed} of {self.rows} rows"
        extra = []
        if self.unchanged:
            extra.append(f"{self.unchanged} unchanged")
        if self.left:
            moved = ", ".join(f"{n} {k}" for k, n in sorted(self.handover.items())) or "no customers"
            extra.append(f"{self.left} clerk{'s' if self.left != 1 else ''} left, their customers: {moved}")
        if extra:
            text += f" ({'; '.join(extra)})"
        return text + (" — dry run, nothing written" if self.dry_run else "")

    def counts(self) -> dict:
        return {"rows": self.rows, "created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "failed": self.failed, "left": self.left, "handover": dict(self.handover)}


# -- reading the file ---------------------------------------------------------------------------------


def _header(kind: str, raw: list[str]) -> list[str]:
    names = [h.strip().lower() for h in raw]
    if not any(names):
        raise FileError("line 1: the header row is missing (the first line must name the columns)")
    known = COLUMNS[kind]
    for i, name in enumerate(names, 1):
        if not name:
            raise FileError(f"line 1: column {i} has no name")
        if name not in known and name != ERROR_COLUMN:
            raise FileError(f"line 1: unknown column {raw[i - 1].strip()!r} (column {i}); "
                            f"{kind} files take: {', '.join(known)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FileError(f"line 1: column {dupes[0]!r} appears more than once")
    missing = [c for c in REQUIRED[kind] if c not in names]
    if missing:
        raise FileError(f"line 1: required column {missing[0]!r} is missing; {kind} files take: {', '.join(known)}")
    if kind == "customers" and "phone" not in names and "unionid" not in names:
        raise FileError("line 1: a customers file needs a phone or a unionid column (what a row is matched on)")
    return names


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, cells) for every non-blank record after the header."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            if any(c.strip() for c in cells):  # cells we escaped in an errors file come back as they were
                yield line, [csvsafe.unescape(c) for c in cells]


def check_file(kind: str, path: Path, config, errors_file: str | Path | None = None) -> tuple[list[str], int]:
    """The header's columns and the number of rows; FileError for anything that stops the import."""
    if kind not in KINDS:
        raise FileError(f"unknown kind {kind!r}: use {', '.join(KINDS)}")
    if not path.is_file():
        raise FileError(f"{path}: no such file")
    if errors_file is not None and Path(errors_file).resolve() == path.resolve():
        raise FileError("--errors must name another file than the one being imported")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            first = next(csv.reader(f), None)
        if first is None:
            raise FileError(f"{path}: the file is empty (a header row is required)")
        columns = _header(kind, first)
        rows = sum(1 for _ in _records(path))
    except UnicodeDecodeError as e:
        raise FileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as CSV UTF-8") from None
    except csv.Error as e:
        raise FileError(f"{path}: not readable as CSV: {e}") from None
    if "phone" in columns and not config.policies.phone_hash_key:
        raise FileError("the phone column needs policies.phone_hash_key (phones are stored as a keyed hash only)")
    return columns, rows


# -- shared helpers -------------------------------------------------------------------------------------


def _cell(row: dict[str, str], name: str) -> str | None:
    v = (row.get(name) or "").strip()
    return v or None


def _pairs(text: str, column: str, sep: str = "=") -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition(sep)
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise RowFailed([(column, f"{part!r} is not key{sep}value (pairs are separated by ';')")])
        if key in out:
            raise RowFailed([(column, f"{key!r} is given twice")])
        out[key] = value
    return out


def _validate(model: type[BaseModel], data: dict, columns: dict[str, str] | None = None,
              problems: list[tuple[str, str]] | None = None) -> BaseModel:
    """Validate with the API's model; errors are reported against the file's column names."""
    problems = list(problems or [])
    try:
        value = model.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(((columns or {}).get(name, name), msg))
        raise RowFailed(problems) from None
    if problems:
        raise RowFailed(problems)
    return value


def _set(obj: Any, values: dict) -> bool:
    changed = False
    for k, v in values.items():
        if getattr(obj, k) != v:
            setattr(obj, k, v)
            changed = True
    return changed


@dataclass
class Ctx:
    gw: Any
    stores: dict[str, int] = field(default_factory=dict)  # a store cell → its id (no store is made meanwhile)

    def now(self):
        return self.gw.clock.now()

    async def store_id(self, s, ref: str, column: str = "store") -> int:
        if ref in self.stores:
            return self.stores[ref]
        found = await s.get(Store, int(ref)) if ref.isdigit() else None
        if found is None:
            named = (await s.exec(select(Store.id).where(Store.name == ref).order_by(Store.id))).all()
            if len(named) > 1:
                raise RowFailed([(column, f"{len(named)} stores are named {ref!r}: give the store id")])
            if not named:
                raise RowFailed([(column, f"no store with id or name {ref!r}")])
            self.stores[ref] = named[0]
        else:
            self.stores[ref] = found.id
        return self.stores[ref]


Outcome = tuple[str, dict | None]  # ("created" | "updated" | "unchanged", extra counts)


# -- stores ---------------------------------------------------------------------------------------------


async def import_store(ctx: Ctx, s, row: dict[str, str]) -> Outcome:
    data: dict[str, Any] = {k: v for k in ("name", "city", "lat", "lng") if (v := _cell(row, k)) is not None}
    problems = []
    if (hours := _cell(row, "opening_hours")) is not None:
        try:
            data["opening_hours"] = {k.lower(): v.lower() for k, v in _pairs(hours, "opening_hours").items()}
        except RowFailed as e:
            problems += e.problems
    body = _validate(StoreIn, data, problems=problems)
    values = body.model_dump(exclude_unset=True)
    found = (await s.exec(select(Store).where(Store.name == body.name).order_by(Store.id))).all()
    if len(found) > 1:
        raise RowFailed([("name", f"{len(found)} stores are named {body.name!r}: cannot tell which to update")])
    if not found:
        s.add(Store(**values, created_at=ctx.now()))
        await s.flush()
        return "created", None
    if not _set(found[0], values):
        return "unchanged", None
    if "opening_hours" in values:
        await ctx.gw.caches.changed(s, HOURS)
    return "updated", None


# -- clerks ---------------------------------------------------------------------------------------------


def _api_field(field_name: str | None) -> str:
    """An ApiError's field (work_ids.dingtalk, store_id) as the file's column."""
    head = (field_name or "").split(".")[0]
    return {"store_id": "store", "clerk_id": "clerk"}.get(head, head)


async def _work_ids(s, clerk_id: int) -> dict[str, str]:
    rows = (await s.exec(select(ClerkIdentity).where(ClerkIdentity.clerk_id == clerk_id))).all()
    return {r.account: r.external_id for r in rows}


async def _set_work_ids_checked(ctx: Ctx, s, clerk: Clerk, work_ids: dict[str, str]) -> None:
    """The API's own checks and writes (configured clerk-side account, 1..128 characters, unique)."""
    await _set_work_ids(s, SimpleNamespace(gw=ctx.gw), clerk, work_ids)


async def _find_clerk(s, name: str, store_id: int, work_ids: dict[str, str]) -> Clerk | None:
    ids: set[int] = set()
    for account, user_id in work_ids.items():
        hit = (await s.exec(select(ClerkIdentity.clerk_id).where(ClerkIdentity.account == account,
                                                                 ClerkIdentity.external_id == user_id))).first()
        if hit is not None:
            ids.add(hit)
    if len(ids) > 1:
        raise RowFailed([("work_ids", f"these work ids belong to different clerks ({', '.join(map(str, sorted(ids)))})")])
    if ids:
        return await s.get(Clerk, ids.pop())
    same = (await s.exec(select(Clerk).where(Clerk.name == name, Clerk.store_id == store_id).order_by(Clerk.id))).all()
    active = [c for c in same if c.status == "active"]
    if len(active) > 1:
        raise RowFailed([("name", f"{len(active)} active clerks are named {name!r} at this store: "
                                  "add their work ids to tell them apart")])
    return active[0] if active else (same[-1] if same else None)


async def import_clerk(ctx: Ctx, s, row: dict[str, str]) -> Outcome:
    problems: list[tuple[str, str]] = []
    data: dict[str, Any] = {k: v for k in ("name", "display_name", "role") if (v := _cell(row, k)) is not None}
    if (ref := _cell(row, "store")) is not None:
        try:
            data["store_id"] = await ctx.store_id(s, ref)
        except RowFailed as e:
            problems += e.problems
            data["store_id"] = 0  # still check the other columns
    work_ids: dict[str, str] | None = None
    if (raw := _cell(row, "work_ids")) is not None:
        try:
            work_ids = data["work_ids"] = _pairs(raw, "work_ids")
        except RowFailed as e:
            problems += e.problems
    status = (_cell(row, "status") or "active").lower()
    if status not in ("active", "left"):
        problems.append(("status", f"{status!r} is not active or left"))
    body = _validate(ClerkIn, data, {"store_id": "store"}, problems)
    values = body.model_dump(exclude_unset=True, exclude={"work_ids"})
    now = ctx.now()
    try:
        clerk = await _find_clerk(s, body.name, body.store_id, work_ids or {})
        if clerk is None:
            clerk = Clerk(**values, created_at=now)
            if status == "left":
                clerk.status, clerk.left_at = "left", now
            s.add(clerk)
            await s.flush()
            await _set_work_ids_checked(ctx, s, clerk, work_ids or {})
            return "created", None
        if clerk.status == "left" and status == "active":
            raise RowFailed([("status", f"clerk {clerk.id} ({clerk.name}) has left; a clerk who left cannot be made "
                                        "active again (write left, or leave the row out)")])
        changed = _set(clerk, values)
        if work_ids is not None and work_ids != await _work_ids(s, clerk.id):
            await _set_work_ids_checked(ctx, s, clerk, work_ids)
            changed = True
        if clerk.status == "active" and status == "left":
            # Exactly what POST /clerks/{id}/leave does: tokens revoked, customers handed over by policy.
            counts = await handover.leave(s, ctx.gw, clerk, now=now, successor=None, resigned=False,
                                          reason="left (import)")
            return "updated", {"left": 1, "handover": dict(counts)}
        return ("updated" if changed else "unchanged"), None
    except ApiError as e:
        raise RowFailed([(_api_field(e.field), str(e))]) from None


# -- customers ------------------------------------------------------------------------------------------


async def _clerk_ref(ctx: Ctx, s, ref: str) -> Clerk:
    """A clerk id, or a work id `account:user_id`."""
    if ref.isdigit():
        clerk = await s.get(Clerk, int(ref))
        if clerk is None:
            raise RowFailed([("clerk", f"no clerk with id {ref}")])
    else:
        account, colon, user_id = ref.partition(":")
        account, user_id = account.strip(), user_id.strip()
        adapter = ctx.gw.adapters.get(account)
        if not colon or not account or not user_id:
            raise RowFailed([("clerk", f"{ref!r} is neither a clerk id nor a work id account:user_id")])
        if adapter is None or adapter.side != "clerk":
            raise RowFailed([("clerk", f"{account!r} is not a configured clerk-side account")])
        clerk = await advisors.clerk_by_identity(s, Identity(adapter.platform, account, user_id))
        if clerk is None:
            raise RowFailed([("clerk", f"no clerk has the work id {user_id!r} on {account!r}")])
    if clerk.status != "active":
        raise RowFailed([("clerk", f"clerk {clerk.id} ({clerk.name}) has left")])
    return clerk


async def _bind(ctx: Ctx, s, c: Customer, clerk: Clerk, now, *, new_customer: bool = False) -> bool:
    """Make `clerk` the customer's advisor (source "import"); the binding policy decides whether an
    advisor they already have is replaced. True if the binding changed."""
    current = None if new_customer else await advisors.open_binding(s, c.id)
    if current is not None:
        binding, bound = current
        if bound.id == clerk.id:
            return False
        policy = ctx.gw.config.policies.binding
        if policy != "latest_wins":
            raise RowFailed([("clerk", f"already the customer of clerk {bound.id} ({bound.display_name}) and "
                                       f"policies.binding is {policy}: move them with "
                                       f"POST /api/v1/customers/{c.id}/transfer")])
        await advisors.close_binding(s, binding, now, "rebound")
        await log_interaction(s, "unbound", occurred_at=now, customer_id=c.id, clerk_id=bound.id,
                              store_id=binding.store_id, payload={"reason": "rebound", "binding_id": binding.id,
                                                                  "source": "import"})
    new = await advisors.open_new_binding(s, c, clerk, now, "import")
    await log_interaction(s, "bound", occurred_at=now, customer_id=c.id, clerk_id=clerk.id, store_id=clerk.store_id,
                          payload={"source": "import", "binding_id": new.id})
    return True


async def import_customer(ctx: Ctx, s, row: dict[str, str]) -> Outcome:
    problems: list[tuple[str, str]] = []
    data: dict[str, Any] = {k: v for k in ("name", "phone") if (v := _cell(row, k)) is not None}
    if (tags := _cell(row, "tags")) is not None:
        data["tags"] = sorted({t.strip() for t in tags.split(";") if t.strip()})
    store_id = clerk = None
    if (ref := _cell(row, "store")) is not None:
        try:
            store_id = await ctx.store_id(s, ref)
        except RowFailed as e:
            problems += e.problems
    if (ref := _cell(row, "clerk")) is not None:
        try:
            clerk = await _clerk_ref(ctx, s, ref)
        except RowFailed as e:
            problems += e.problems
    unionid = _cell(row, "unionid")
    if unionid is not None and len(unionid) > 128:
        problems.append(("unionid", "longer than 128 characters"))
    if "phone" not in data and unionid is None:
        problems.append(("phone", "a phone or a unionid is required (what the row is matched on when re-imported)"))
    body = _validate(CustomerPatch, data, problems=problems)
    if clerk is not None and store_id is not None and clerk.store_id != store_id:
        raise RowFailed([("store", f"clerk {clerk.id} ({clerk.display_name}) works at store {clerk.store_id}, "
                                   f"not {store_id}: a customer's home store is their advisor's")])
    now = ctx.now()
    phone_hash = advisors.phone_hash(ctx.gw.config.policies.phone_hash_key, body.phone) if body.phone else None
    by_union = await advisors._by_unionid(s, unionid) if unionid else None
    by_phone = None
    if phone_hash:
        by_phone = (await s.exec(select(Customer).where(Customer.phone_hash == phone_hash,
                                                        Customer.merged_into_id.is_(None)).order_by(Customer.id))).first()
    created = changed = False
    if by_union is not None and by_phone is not None and by_union.id != by_phone.id:
        # One person, two records: as when the API is given a phone another record has (PATCH).
        keep, gone = (by_union, by_phone) if by_union.id < by_phone.id else (by_phone, by_union)
        c = await advisors.merge_customers(s, keep, gone, now, "same phone")
        changed = True
    else:
        c = by_union or by_phone
    if c is None:
        if phone_hash is None:
            raise RowFailed([("unionid", "no customer has this unionid yet; give a phone to create the customer "
                                         "(the unionid links once they reach us on WeChat)")])
        c = Customer(name=body.name, phone_hash=phone_hash, store_id=store_id, tags=body.tags or None,
                     created_at=now)
        s.add(c)
        await s.flush()
        created = True
    else:
        values: dict[str, Any] = {}
        if body.name is not None:
            values["name"] = body.name
        if phone_hash is not None:
            values["phone_hash"] = phone_hash
        if store_id is not None:
            values["store_id"] = store_id
        old_tags = set(c.tags or [])
        if body.tags is not None:
            values["tags"] = body.tags or None
        changed = _set(c, values) or changed
        if body.tags is not None and set(body.tags) != old_tags:
            await log_interaction(s, "tagged", occurred_at=now, customer_id=c.id, store_id=c.store_id,
                                  payload={"added": sorted(set(body.tags) - old_tags),
                                           "removed": sorted(old_tags - set(body.tags)), "source": "import"})
    if clerk is not None:
        changed = await _bind(ctx, s, c, clerk, now, new_customer=created) or changed
    return ("created" if created else "updated" if changed else "unchanged"), None


HANDLERS: dict[str, Callable[[Ctx, Any, dict[str, str]], Awaitable[Outcome]]] = {
    "stores": import_store, "clerks": import_clerk, "customers": import_customer}


# -- running an import ----------------------------------------------------------------------------------


@dataclass
class _Row:
    line: int
    cells: list[str]
    outcome: Outcome | None = None
    problems: list[tuple[str, str]] | None = None


class _Report:
    def __init__(self, result: Result, columns: list[str], out: TextIO, errors_to: TextIO | None):
        self.result, self.columns, self.out = result, columns, out
        self.keep = [i for i, c in enumerate(columns) if c != ERROR_COLUMN]
        self.writer = csvsafe.Writer(errors_to) if errors_to is not None else None
        if self.writer:
            self.writer.writerow([columns[i] for i in self.keep] + [ERROR_COLUMN])

    def row(self, r: _Row) -> None:
        res = self.result
        if r.problems:
            res.failed += 1
            for column, reason in r.problems:
                print(f"line {r.line}" + (f", column {column}" if column else "") + f": {reason}", file=self.out)
            if self.writer:
                cells = r.cells + [""] * (len(self.columns) - len(r.cells))
                text = "; ".join(f"{c}: {why}" if c else why for c, why in r.problems)
                self.writer.writerow([cells[i] for i in self.keep] + [f"line {r.line}: {text}"])
            return
        status, extra = r.outcome
        setattr(res, status, getattr(res, status) + 1)
        if extra:
            res.left += extra.get("left", 0)
            res.handover.update(extra.get("handover", {}))


async def _one(handler, ctx: Ctx, s, columns: list[str], r: _Row) -> None:
    r.outcome = r.problems = None
    if len(r.cells) > len(columns) and any(c.strip() for c in r.cells[len(columns):]):
        r.problems = [("", f"the row has {len(r.cells)} cells but the header names {len(columns)} columns")]
        return
    row = dict(zip(columns, r.cells, strict=False))
    try:
        async with s.begin_nested():
            r.outcome = await handler(ctx, s, row)
    except RowFailed as e:
        r.problems = e.problems
    except ApiError as e:
        r.problems = [(_api_field(e.field), str(e))]
    except Exception as e:  # noqa: BLE001 - a database refusal of this row (constraint, value too long…)
        r.problems = [("", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])]


async def run_import(gw, kind: str, path: str | Path, *, dry_run: bool = False, errors_file: str | Path | None = None,
                     out: TextIO | None = None, progress: TextIO | None = None, batch: int = BATCH) -> Result:
    """Import one file. FileError (nothing written) when the file as a whole cannot be imported."""
    out = out or sys.stdout
    progress = progress or sys.stderr
    path = Path(path)
    columns, total = check_file(kind, path, gw.config, errors_file)
    result = Result(kind, str(path), dry_run)
    handler, ctx = HANDLERS[kind], Ctx(gw)
    # The file is read and written synchronously: the importer runs alone on its loop (the CLI).
    errors_to = Path(errors_file).open("w", encoding="utf-8-sig", newline="") if errors_file else None  # noqa: ASYNC230
    report = _Report(result, columns, out, errors_to)
    try:
        pending: list[_Row] = []

        async def flush() -> None:
            async with gw.db() as s:
                for r in pending:
                    await _one(handler, ctx, s, columns, r)
                    result.rows += 1
                    if result.rows % PROGRESS_EVERY == 0:
                        print(f"import {kind}: {result.rows} of {total} rows", file=progress, flush=True)
                if dry_run:
                    await s.rollback()
                else:
                    try:
                        await s.commit()
                    except Exception:  # noqa: BLE001 - the batch could not commit: each good row on its own
                        await s.rollback()
                        ctx.stores.clear()
                        for r in pending:
                            if r.problems:
                                continue
                            async with gw.db() as one:
                                await _one(handler, ctx, one, columns, r)
                                try:
                                    await one.commit()
                                except Exception as e:  # noqa: BLE001
                                    r.outcome, r.problems = None, [("", f"{type(e).__name__}: could not commit")]
            for r in pending:
                report.row(r)
            pending.clear()

        for line, cells in _records(path):
            pending.append(_Row(line, cells))
            if len(pending) >= batch:
                await flush()
        if pending:
            await flush()
    finally:
        if errors_to is not None:
            errors_to.close()
        if not dry_run:
            await _audit(gw, result)
    print(result.summary(), file=out)
    return result


async def _audit(gw, result: Result) -> None:
    """The run in the admin audit log, with its counts (a dry run writes nothing, not even this)."""
    try:
        async with gw.db() as s:
            s.add(AuditEntry(at=gw.clock.now(), token_id=None, role="cli", method="IMPORT",
                             path=f"gateway import {result.kind} {Path(result.file).name}"[:300],
                             status=200 if not result.failed else 207,
                             detail={"kind": result.kind, "file": result.file, **result.counts()}))
            await s.commit()
    except Exception as e:  # noqa: BLE001 - the import itself is done; say so rather than hide it
        print(f"warning: could not write the audit log entry: {type(e).__name__}: {e}", file=sys.stderr)


def main(config, kind: str, file: str, *, dry_run: bool = False, errors_file: str | None = None) -> int:
    """The CLI: 0 every row imported, 1 some rows failed, 2 the file (or the database) could not be used."""
    import asyncio

    from gateway.runtime import Gateway

    try:
        check_file(kind, Path(file), config, errors_file)
    except FileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if config.database.is_sqlite and not dry_run:
        from gateway.db import upgrade_sync

        upgrade_sync(config.database.url)

    async def run() -> Result:
        gw = Gateway(config)
        try:
            return await run_import(gw, kind, file, dry_run=dry_run, errors_file=errors_file)
        finally:
            await gw.engine.dispose()

    try:
        return asyncio.run(run()).exit_code
    except FileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the database is unreachable or not migrated
        print(f"error: the import stopped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 2

