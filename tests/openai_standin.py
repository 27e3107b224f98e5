"""A scripted OpenAI-compatible HTTP server for testing client orchestration.

It runs the real HTTP stack (FastAPI under uvicorn, in a thread, on a loopback port) but
generates nothing: each request's reply follows a plan keyed by the user turn's text —
failures with chosen status codes and headers, delays, then a canned completion.  It
records what it received and the peak number of requests in flight.  It stands in for a
model server only where the thing under test is retry, rate-limit and concurrency logic.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# Failures ask the client to retry after 10 ms unless a step says otherwise, so tests of
# retry logic do not sit through the client's default backoff.
QUICK_RETRY = {"retry-after-ms": "10"}


@dataclass(frozen=True)
class Step:
    """One scripted reply: a status (200 = a completion), optional delay and headers."""

    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=lambda: dict(QUICK_RETRY))
    message: dict[str, Any] | None = None  # the assistant message of a 200 reply
    finish_reason: str = "stop"


@dataclass
class Received:
    """One request as the server saw it."""

    body: dict[str, Any]
    headers: dict[str, str]
    at: float


def user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn (plain string or the text content part)."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class StandinServer:
    """Scripted replies per user text; unplanned texts follow ``default_steps`` (by default an
    immediate completion: ``reply(text)`` when set, else an echo)."""

    def __init__(self) -> None:
        self.plans: dict[str, list[Step]] = {}
        self.default_steps: list[Step] = [Step()]  # the plan of every unplanned text
        self.reply: Callable[[str], dict[str, Any]] | None = None  # 200 message by user text
        self.received: list[Received] = []
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = FastAPI()
        self.app.add_api_route("/v1/chat/completions", self._chat, methods=["POST"])
        self.base_url = ""

    def plan(self, text: str, *steps: Step) -> None:
        """Reply to requests whose user text is ``text`` with ``steps`` in turn (last repeats)."""
        self.plans[text] = list(steps)

    def reset(self, drain_s: float = 5.0) -> None:
        """Forget plans and records (between tests sharing one server), once the replies
        to abandoned requests (a client that timed out) have finished."""
        deadline = time.monotonic() + drain_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self.plans.clear()
        self.default_steps = [Step()]
        self.reply = None
        self.received.clear()
        self.attempts.clear()
        self.max_in_flight = 0

    async def _chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.received.append(Received(body, dict(request.headers), time.monotonic()))
        text = user_text(body)
        n = self.attempts.get(text, 0)
        self.attempts[text] = n + 1
        steps = self.plans.get(text) or self.default_steps
        step = steps[min(n, len(steps) - 1)]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(step.delay_s)
        finally:
            self.in_flight -= 1
        if step.status != 200:
            error = {"error": {"message": f"scripted {step.status}", "code": step.status}}
            return JSONResponse(error, status_code=step.status, headers=step.headers)
        message = step.message or (
            self.reply(text) if self.reply else {"role": "assistant", "content": f"echo: {text}"}
        )
        return JSONResponse(_completion(body, message, step.finish_reason, len(text)))


def _completion(
    body: dict[str, Any], message: dict[str, Any], finish_reason: str, chars: int
) -> dict[str, Any]:
    prompt_tokens = 10 + chars // 4
    completion_tokens = 5
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@contextmanager
def running(standin: StandinServer) -> Iterator[StandinServer]:
    """Serve ``standin`` on a free loopback port in a thread for the duration of the block."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(standin.app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("stand-in server did not start")
        time.sleep(0.01)
    standin.base_url = f"http://127.0.0.1:{port}"
    try:
        yield standin
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
