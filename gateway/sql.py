"""Small dialect helpers: the two backends differ only in how an upsert is spelled."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite


def insert_ignore(session, table, *, conflict: list[str], where=None):
    """INSERT … ON CONFLICT (cols) [WHERE partial-index predicate] DO NOTHING for the session's dialect."""
    mod = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    # The Table, not the mapped class: a class makes it an ORM bulk insert, which costs ~25 µs a row.
    return mod.insert(getattr(table, "__table__", table)).on_conflict_do_nothing(index_elements=conflict,
                                                                                 index_where=where)
