"""What the routes share: paging, bounded integers, documented error answers."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Query

from shared.contracts.api import ErrorOut, Page

T = TypeVar("T")
# Every integer a client sends is bounded by the schema: the database's own limits (a
# 64-bit OFFSET, a 32-bit step) are never reached, and a bad value is a 422, not a 500.
INT32_MAX = 2**31 - 1
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]


def page_of(items: list[T], total: int, limit: int, offset: int) -> Page[T]:
    """A page with the offset of the next one, or None at the end."""
    following = offset + len(items)
    return Page[T](
        items=items,
        total=total,
        limit=limit,
        offset=offset,
        next_offset=following if following < total else None,
    )


# Error answers a route documents besides those of every route (401, 422, 503).
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorOut, "description": "No such object of the caller's team"}
}
CONFLICT: dict[int | str, dict[str, object]] = {
    409: {"model": ErrorOut, "description": "Conflicts with an existing object"}
}
