"""jobs.idempotency_key: a client's retry of a submission finds the job it created

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.create_unique_constraint(
            "uq_jobs_team_idempotency_key", ["team_id", "idempotency_key"]
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_team_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")
