"""The FastAPI application of `lav2 serve`: routes, bearer-token check, body limit, errors.

  POST /v1/chat/completions   OpenAI chat completions (`lav2_jax.serve.schema`), streamed as SSE or whole
  GET  /v1/models             the one served model
  GET  /health                {"status": "ok", "model", engine_calls, requests, cancelled, largest_batch, queued,
                               running} (`Batcher.stats`; public, no key needed)
  GET  /                      the chat page (`lav2_jax/serve/static/index.html`, which calls the API above)

`create_app(bundle, settings)` builds the app; its lifespan starts and stops the batcher worker
(`lav2_jax.serve.batcher`), reachable as `app.state.batcher`. With `settings.api_key`, every /v1 route needs
``Authorization: Bearer <key>``, compared in constant time (`hmac.compare_digest`), else 401. The body is read
in chunks and refused with 413 as soon as it passes `limits.max_body_bytes` (or its Content-Length says so).
Request preparation (template, tokenizer, image decoding) runs in a worker thread, off the event loop. A client
that disconnects cancels its job (streamed: when the response stream is closed; whole: a task waits for
``http.disconnect``). Every refusal is JSON ``{"error": …}``; an unexpected failure answers 500 and the server
goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from lav2_jax.serve.batcher import Batcher, Job, QueueFull
from lav2_jax.serve.inputs import prepare_request
from lav2_jax.serve.schema import ApiError, Defaults, Limits, parse_request
from lav2_jax.serve.sse import Completion, collect, event_stream

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    model_name: str = "lav2"
    limits: Limits = Limits()
    defaults: Defaults = Defaults()
    api_key: Optional[str] = None
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    retry_after_s: int = 1


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or ApiError(413) once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes; this server's limit is {limit} bytes",
                       code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over this server's limit of {limit} bytes",
                           code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def check_key(request: Request, api_key: Optional[str]) -> None:
    if api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _on_disconnect(request: Request, job: Job, batcher: Batcher) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            batcher.cancel(job)
            job.events.put_nowait(("gone",))
            return


def page_html(bundle, settings: ServeSettings) -> str:
    """The chat page with the server's settings inlined as JSON (`<` escaped so no text can close the script)."""
    s = settings
    config = {"model": s.model_name, "temperature": s.defaults.temperature, "top_p": s.defaults.top_p,
              "max_tokens": s.defaults.max_tokens, "max_tokens_limit": s.limits.max_tokens,
              "auth": s.api_key is not None, "vision": bundle.model.vision is not None,
              "max_image_bytes": s.limits.max_image_bytes}
    with open(PAGE, encoding="utf-8") as f:
        return f.read().replace("__LAV2_CONFIG__", json.dumps(config).replace("<", "\\u003c"))


def create_app(bundle, settings: ServeSettings = ServeSettings()) -> FastAPI:
    batcher = Batcher(bundle, settings.max_batch, settings.batch_wait_ms, settings.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="lav2 serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.settings = settings
    html = page_html(bundle, settings)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        body = {"error": {"message": f"internal error: {type(e).__name__}: {e}", "type": "server_error",
                          "param": None, "code": None}}
        return JSONResponse(body, status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, **batcher.stats()}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request, settings.api_key)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "lav2"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request, settings.api_key)
        req = parse_request(await read_body(request, settings.limits.max_body_bytes), settings.limits)
        if req.model is not None and req.model != settings.model_name:
            raise ApiError(404, f"model {req.model!r} is not served here; this server serves "
                                f"{settings.model_name!r}", param="model", code="model_not_found")
        prepared = await run_in_threadpool(prepare_request, bundle, req, settings.limits, settings.defaults)
        job = Job.create(prepared)
        try:
            batcher.submit(job)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy ({e}); retry after {settings.retry_after_s} s",
                           code="queue_full", headers={"Retry-After": str(settings.retry_after_s)}) from None
        completion = Completion(settings.model_name, prepared.prompt_tokens)
        if prepared.stream:
            return StreamingResponse(event_stream(job, completion, prepared.include_usage,
                                                  lambda: batcher.cancel(job)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        watcher = asyncio.create_task(_on_disconnect(request, job, batcher))
        try:
            text, reason, tokens = await collect(job)
        except ConnectionAbortedError:
            return Response(status_code=499)  # nobody is listening any more
        except RuntimeError as e:
            raise ApiError(500, str(e)) from None
        finally:
            watcher.cancel()
        return completion.full(text, reason, tokens)

    return app
