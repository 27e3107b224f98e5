"""Teams and their API keys: keys are shown once, stored as a hash, revocable."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, Artifact, Dataset, Job, Team, utcnow
from shared.errors import Conflict, NotFound, TeamNotFound, Unauthorized

KEY_SCHEME = "vr1"
Owned = TypeVar("Owned", Job, Dataset, Artifact)


@dataclass(frozen=True)
class IssuedKey:
    """A freshly made key: the only moment its secret is known."""

    key_id: uuid.UUID
    team_id: uuid.UUID
    prefix: str
    secret: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_team(session: Session, *, name: str) -> Team:
    """Add a team; names are unique."""
    if session.scalar(select(Team).where(Team.name == name)) is not None:
        raise Conflict(f"team {name!r} already exists", team=name)
    team = Team(name=name)
    session.add(team)
    session.flush()
    return team


def get_team(session: Session, *, name: str) -> Team:
    """A team by name."""
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise TeamNotFound(name)
    return team


def load_owned(
    session: Session,
    model: type[Owned],
    resource_id: uuid.UUID,
    *,
    team: Team | None,
    missing: Callable[[uuid.UUID], NotFound],
) -> Owned:
    """A resource by ID; another team's resource does not exist for the caller (``team``
    None: any team's, for the platform's own processes)."""
    row = session.get(model, resource_id)
    if row is None or (team is not None and row.team_id != team.id):
        raise missing(resource_id)
    return row


def create_key(session: Session, *, team: Team, name: str = "") -> IssuedKey:
    """Issue an API key for a team: ``vr1_<prefix>_<secret>``."""
    prefix = secrets.token_hex(6)
    secret = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(team_id=team.id, name=name, prefix=prefix, secret_hash=_hash(secret))
    session.add(key)
    session.flush()
    return IssuedKey(key.id, team.id, prefix, secret)


def revoke_key(session: Session, *, prefix: str) -> ApiKey:
    """Revoke a key by its prefix; a revoked key never authenticates again."""
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None:
        raise NotFound(f"API key {prefix} not found", prefix=prefix)
    key.revoked_at = key.revoked_at or utcnow()
    return key


def authenticate(session: Session, secret: str) -> Team:
    """The team a presented key belongs to; Unauthorized for anything else."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME:
        raise Unauthorized("malformed API key")
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if key is None or not hmac.compare_digest(key.secret_hash, _hash(secret)):
        raise Unauthorized("unknown API key")
    if key.revoked_at is not None:
        raise Unauthorized("API key revoked")
    key.last_used_at = utcnow()
    return key.team
