"""Request schema of `POST /v1/chat/completions` (the OpenAI chat format), the server's limits, and its errors.

Accepted body (fields not listed are ignored, as OpenAI clients send many optional ones)::

    {"model": str?, "messages": [{"role": "system"|"developer"|"user"|"assistant",
                                  "content": str | [{"type": "text", "text": str},
                                                    {"type": "image_url", "image_url": {"url": "data:..."}}]}],
     "max_tokens" | "max_completion_tokens": int?, "temperature": float?, "top_p": float?, "seed": int?,
     "stop": str | [str]?, "stream": bool?, "stream_options": {"include_usage": bool}?, "n": 1?}

Every refusal is an `ApiError` with an HTTP status and an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}``: 400 invalid request, 401 missing/wrong key, 404 unknown
model, 413 body / image bytes / image pixels over the limit, 503 queue full (with `Retry-After`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Optional, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for (the `lav2 serve` flags of the same names)."""

    max_body_bytes: int = 8 * 2**20  # whole JSON body
    max_image_bytes: int = 4 * 2**20  # decoded image file bytes (after base64)
    max_image_pixels: int = 4096 * 4096  # width * height of the image as sent
    max_prompt_tokens: int = 0  # templated prompt incl. BOS; 0 = the model's context - 1
    max_tokens: int = 512  # the most new tokens one request may ask for
    max_stops: int = 4


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Sampling (and system text) used when a request leaves a field out (the release's defaults,
    docs/design.md §3.3.3)."""

    max_tokens: int = 256
    temperature: float = 0.1
    top_p: float = 0.75
    system: Optional[str] = None  # system text when a request has no system message (None: the template's)


class ApiError(Exception):
    """A refusal: HTTP `status` with an OpenAI-style error body (and optional extra headers)."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def kind(self) -> str:
        return {401: "authentication_error", 404: "not_found_error", 503: "server_busy"}.get(
            self.status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageUrl(_Lenient):
    url: str
    detail: Optional[str] = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: Union[ImageUrl, str]

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Union[TextPart, ImagePart]]]


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return tuple(s for s in stops if s)


def _where(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_request(body: bytes, limits: Limits) -> ChatRequest:
    """JSON bytes → ChatRequest, or ApiError(400) naming the first offending field."""
    try:
        raw: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    try:
        req = ChatRequest.model_validate(raw)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = _where(err.get("loc", ()))
        raise ApiError(400, f"{where or 'body'}: {err.get('msg', 'invalid')}", param=where or None) from None
    if req.n != 1:
        raise ApiError(400, "n: only n=1 is supported", param="n")
    if len(req.stops()) > limits.max_stops:
        raise ApiError(400, f"stop: at most {limits.max_stops} stop strings", param="stop")
    asked = req.max_completion_tokens or req.max_tokens
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(400, f"max_tokens: {asked} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    return req
