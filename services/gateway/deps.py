"""Request dependencies: the database, the artifact store, the caller's team."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.gateway.settings import GatewaySettings
from shared.db.models import Team
from shared.db.session import Database
from shared.errors import Unauthorized
from shared.storage import ArtifactStore
from shared.teams import authenticate

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer vr1_…`")


@dataclass
class Context:
    """What the app holds for its lifetime."""

    settings: GatewaySettings
    db: Database
    store: ArtifactStore


def get_context(request: Request) -> Context:
    context: Context = request.app.state.context
    return context


ContextDep = Annotated[Context, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """One unit of work per request: committed before the response, rolled back on error."""
    with context.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_team(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Team:
    """The team whose API key the request carries."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return authenticate(session, credentials.credentials)


TeamDep = Annotated[Team, Depends(get_team)]
