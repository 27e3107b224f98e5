"""The reward service: registered rewards over HTTP, started by ``vr1 serve reward``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from services.reward.metrics import ServiceMetrics
from services.reward.settings import RewardSettings
from shared.contracts.api import ErrorOut
from shared.contracts.rewards import (
    DEFAULT_REWARD,
    RewardInfo,
    RewardList,
    ScoreDetail,
    ScoreItemIn,
    ScoreRequest,
    ScoreResponse,
)
from shared.errors import (
    BatchTooLarge,
    CompletionTooLong,
    InvalidInput,
    PayloadTooLarge,
    VR1Error,
)
from shared.rewards import REWARDS, ScoreItem, Scorer, ScoreResult, VerifierPool, get_reward

router = APIRouter()


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its definitions written in place: a request body given
    by hand in OpenAPI cannot point into the model's own ``$defs``."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def get_settings(request: Request) -> RewardSettings:
    """The settings the app was created with."""
    settings: RewardSettings = request.app.state.settings
    return settings


def get_pool(request: Request) -> VerifierPool:
    """The app's verifier pool (started with the app)."""
    pool: VerifierPool = request.app.state.pool
    return pool


def get_metrics(request: Request) -> ServiceMetrics:
    """The app's metrics."""
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[RewardSettings, Depends(get_settings)]
PoolDep = Annotated[VerifierPool, Depends(get_pool)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


@router.get("/healthz")
def healthz(pool: PoolDep) -> dict[str, object]:
    """Liveness and how many verifier workers are up."""
    return {"status": "ok", "workers": pool.workers, "workers_alive": pool.alive_workers()}


@router.get("/metrics", response_class=Response)
def metrics(service_metrics: MetricsDep) -> Response:
    """Scored items by reason, verifier failures and restarts (Prometheus text format)."""
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/rewards")
def list_rewards() -> RewardList:
    """The registered rewards."""
    infos = [
        RewardInfo(
            name=s.name,
            description=s.description,
            uses_answer=s.uses_answer,
            default=s.name == DEFAULT_REWARD,
        )
        for s in REWARDS.values()
    ]
    return RewardList(rewards=infos)


@router.post(
    "/v1/score",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(ScoreRequest)}},
        }
    },
    responses={
        413: {"model": ErrorOut, "description": "Too many items, or a body or item too large"},
        422: {"model": ErrorOut, "description": "Not a valid score request"},
    },
)
async def score_batch(
    request: Request, settings: SettingsDep, pool: PoolDep, service_metrics: MetricsDep
) -> ScoreResponse:
    """Score a batch of completions against their gold answers with one reward."""
    payload = parse_request(await read_body(request, settings.max_body_bytes))
    check_limits(payload.items, settings)
    spec = get_reward(payload.reward)
    items = [ScoreItem(i.completion, i.answer) for i in payload.items]
    scorer = Scorer(pool)
    results = await run_in_threadpool(
        scorer.score, spec.combine, items, uses_answer=spec.uses_answer
    )
    service_metrics.observe(spec.name, results)
    return to_response(results)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
    return bytes(body)


def parse_request(body: bytes) -> ScoreRequest:
    """The validated request; malformed JSON or fields become a 422 with the errors."""
    try:
        return ScoreRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = json.loads(exc.json(include_url=False, include_input=False))
        raise InvalidInput("malformed score request", errors=errors) from exc


def check_limits(items: list[ScoreItemIn], settings: RewardSettings) -> None:
    """Refuse oversized batches and completions with 413."""
    if len(items) > settings.max_batch_items:
        raise BatchTooLarge(len(items), settings.max_batch_items)
    for index, item in enumerate(items):
        if len(item.completion) > settings.max_completion_chars:
            raise CompletionTooLong(index, len(item.completion), settings.max_completion_chars)


def to_response(results: list[ScoreResult]) -> ScoreResponse:
    """The wire form of a batch of results."""
    details = [ScoreDetail.model_validate(r, from_attributes=True) for r in results]
    return ScoreResponse(rewards=[r.reward for r in results], details=details)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """Map the platform's typed errors to their status and JSON body."""
    if isinstance(exc, VR1Error):
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)
    raise exc


def create_app(settings: RewardSettings | None = None) -> FastAPI:
    """The reward service app; its verifier pool lives as long as the app runs."""
    settings = settings or RewardSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = VerifierPool(
            settings.resolved_workers,
            timeout_s=settings.item_timeout_s,
            cache_size=settings.cache_size,
        )
        app.state.pool = pool
        try:
            yield
        finally:
            await run_in_threadpool(pool.close)

    app = FastAPI(title="vr1 reward service", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = ServiceMetrics(lambda: getattr(app.state, "pool", None))
    app.add_exception_handler(VR1Error, handle_error)
    app.include_router(router)
    return app


def serve(settings: RewardSettings | None = None) -> None:
    """Run the reward service with uvicorn until interrupted."""
    settings = settings or RewardSettings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )
