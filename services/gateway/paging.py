"""Paging helper shared by the list routes."""

from __future__ import annotations

from typing import TypeVar

from shared.contracts.api import Page

T = TypeVar("T")


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
