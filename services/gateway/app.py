"""The gateway: the platform's public REST API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.gateway import routes_artifacts, routes_datasets, routes_items, routes_jobs
from services.gateway.dashboard import mount_dashboard
from services.gateway.deps import Context, check_query
from services.gateway.settings import GatewaySettings
from shared.contracts.api import ErrorOut, Health
from shared.db.session import Database, Dispatcher
from shared.errors import VR1Error
from shared.queue import CeleryDispatcher, make_celery
from shared.storage import open_store

log = logging.getLogger(__name__)


def package_version() -> str:
    """The installed platform version."""
    try:
        return version("vision-r1-platform")
    except PackageNotFoundError:
        return "0.0.0"


def default_dispatcher(settings: GatewaySettings) -> Dispatcher | None:
    """Celery when a broker is configured; without one, submitted work waits in the
    database's outbox until a relay with a broker delivers it."""
    if settings.redis_url:
        app = make_celery(settings.redis_url, visibility_timeout_s=settings.visibility_timeout_s)
        return CeleryDispatcher(app)
    return None


def _error_response(exc: VR1Error) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content=exc.to_dict())


def _validation_response(_request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    where = ", ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:5]
    )
    body = {"error": "invalid_input", "message": f"invalid request: {where}"}
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    return JSONResponse(status_code=422, content={**body, "detail": detail})


def _unavailable_response(_request: Request, exc: Exception) -> JSONResponse:
    """The database is away for a moment (a restart, a failover): say so, never a 500."""
    log.warning("database unavailable: %s", exc)
    body = {"error": "unavailable", "message": "the database is unavailable; retry shortly"}
    return JSONResponse(status_code=503, content=body, headers={"Retry-After": "5"})


def _http_error_response(request: Request, exc: Exception) -> JSONResponse:
    """Routing errors in the platform's error shape; a 405 names every method the path
    has in ``Allow`` (not only those of the first route that matched the path)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    if exc.status_code == 405:
        allowed = [
            method
            for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
            if any(
                route.matches({**request.scope, "method": method})[0] is Match.FULL
                for route in request.app.router.routes
            )
        ]
        headers["Allow"] = ", ".join(allowed)
    body = {"error": code, "message": str(exc.detail)}
    return JSONResponse(status_code=exc.status_code, content=body, headers=headers)


def create_app(
    settings: GatewaySettings | None = None,
    *,
    db: Database | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    """Build the gateway app; tests pass their own database or dispatcher."""
    settings = settings or GatewaySettings()
    database = db or Database(
        settings.resolved_database_url, dispatcher or default_dispatcher(settings)
    )
    store = open_store(settings.resolved_artifact_uri)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        database.dispose()

    app = FastAPI(
        title="Vision-R1 platform",
        version=package_version(),
        description="Cold-start data, SFT, GRPO with PTST, and evaluation as jobs.",
        lifespan=lifespan,
        dependencies=[Depends(check_query)],
        responses={
            400: {"model": ErrorOut, "description": "The body cannot be read as JSON"},
            401: {"model": ErrorOut, "description": "Missing or invalid API key"},
            422: {"model": ErrorOut, "description": "Invalid request"},
            503: {"model": ErrorOut, "description": "The database is unavailable; retry"},
        },
    )
    app.state.context = Context(settings=settings, db=database, store=store)
    app.add_exception_handler(VR1Error, lambda _r, e: _error_response(e))  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_response)
    app.add_exception_handler(OperationalError, _unavailable_response)
    app.add_exception_handler(StarletteHTTPException, _http_error_response)
    app.add_exception_handler(InterfaceError, _unavailable_response)

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["health"],
        responses={503: {"model": Health, "description": "A dependency is down"}},
    )
    def healthz() -> JSONResponse:
        """Liveness and dependencies: database and (when configured) broker."""
        health = _health(settings, database)
        code = 200 if health.status == "ok" else 503
        return JSONResponse(status_code=code, content=health.model_dump())

    app.include_router(routes_datasets.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_artifacts.router)
    app.include_router(routes_items.router)
    mount_dashboard(app)
    return app


def _health(settings: GatewaySettings, database: Database) -> Health:
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        db_ok = True
    except (SQLAlchemyError, OSError):  # the database is down: "not healthy", never a 500
        db_ok = False
    broker: bool | None = None
    if settings.redis_url:
        import redis

        try:
            broker = bool(redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping())
        except redis.RedisError:
            broker = False
    ok = db_ok and broker is not False
    return Health(
        status="ok" if ok else "degraded", database=db_ok, broker=broker, version=package_version()
    )


def serve(settings: GatewaySettings | None = None) -> None:
    """Run the gateway under uvicorn."""
    import uvicorn

    settings = settings or GatewaySettings()
    logging.basicConfig(level=settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
