"""Migrations build the schema on PostgreSQL and SQLite, and go down and up again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from shared.db import migrate
from shared.db.models import Base

pytestmark = pytest.mark.integration


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _up_down_up(url: str) -> None:
    migrate.upgrade(url)
    assert migrate.current(url) is not None
    assert _tables(url) == set(Base.metadata.tables)
    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    assert _tables(url) == set()
    migrate.upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)


def test_up_down_up_on_postgres(pg_url: str) -> None:
    _up_down_up(pg_url)


def test_up_down_up_on_sqlite(tmp_path: Path) -> None:
    _up_down_up(f"sqlite:///{tmp_path / 'nested' / 'vr1.db'}")


def test_models_match_the_migrations(pg_url: str) -> None:
    """The models and the migrated schema agree (nothing left to autogenerate)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate.upgrade(pg_url)
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
