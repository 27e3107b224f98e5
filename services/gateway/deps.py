"""Request dependencies: the database, the artifact store, the caller's team."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.gateway.settings import GatewaySettings
from shared.db.models import Team
from shared.db.session import Database
from shared.errors import InvalidInput, Unauthorized
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


def check_query(request: Request) -> None:
    """A query parameter the route does not take is an error, not silently ignored (a typo
    such as ``?statuss=running`` would otherwise list every job); so is a NUL character."""
    if any("\x00" in key or "\x00" in value for key, value in request.query_params.multi_items()):
        raise InvalidInput("NUL characters (%00) are not allowed in query parameters")
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise InvalidInput(
            f"unknown query parameter(s): {', '.join(map(repr, unknown))}; this takes: {takes}"
        )


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names
