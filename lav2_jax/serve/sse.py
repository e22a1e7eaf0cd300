"""OpenAI response bodies: the whole `chat.completion`, and server-sent events of `chat.completion.chunk`.

Streaming (`text/event-stream`): ``data: {chunk}\\n\\n`` lines — first a chunk with ``delta.role = "assistant"``,
then one chunk per generated token whose text became final (text held back by the streamer, e.g. a possible
start of a stop string, joins the next chunk), then a chunk with an empty delta and the `finish_reason`, a usage
chunk (empty `choices`) when ``stream_options.include_usage``, and ``data: [DONE]``. An engine failure mid-stream
is sent as ``data: {"error": {...}}`` before ``[DONE]``. Leaving the generator early (the client disconnected)
cancels the job, which stops its row at the next decode step.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator, Callable, Optional


class Completion:
    """Identity of one response (id, created, model) and its body builders."""

    def __init__(self, model: str, prompt_tokens: int):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model, self.prompt_tokens = model, prompt_tokens

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def full(self, text: str, finish_reason: str, completion_tokens: int) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason, "logprobs": None}],
                "usage": self.usage(completion_tokens)}

    def chunk(self, delta: dict, finish_reason: Optional[str] = None, usage: Optional[dict] = None) -> dict:
        choices = [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                                 "logprobs": None}]
        out = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out


def sse(payload) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode("utf-8")


async def event_stream(job, completion: Completion, include_usage: bool, cancel: Callable[[], None]
                       ) -> AsyncIterator[bytes]:
    """The SSE body of a streamed request; `cancel()` runs when the stream is left before the job ended."""
    ended = False
    try:
        yield sse(completion.chunk({"role": "assistant", "content": ""}))
        while True:
            event = await job.events.get()
            if event[0] == "delta":
                yield sse(completion.chunk({"content": event[1]}))
                continue
            ended = True
            if event[0] == "error":
                yield sse({"error": {"message": event[1], "type": "server_error", "param": None, "code": None}})
            else:
                _, reason, tokens = event
                yield sse(completion.chunk({}, reason))
                if include_usage:
                    yield sse(completion.chunk({}, usage=completion.usage(tokens)))
            yield sse("[DONE]")
            return
    finally:
        if not ended:
            cancel()


async def collect(job) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of a non-streamed job; RuntimeError on an engine failure."""
    pieces = []
    while True:
        event = await job.events.get()
        if event[0] == "delta":
            pieces.append(event[1])
        elif event[0] == "error":
            raise RuntimeError(event[1])
        elif event[0] == "gone":
            raise ConnectionAbortedError("the client disconnected")
        else:
            return "".join(pieces), event[1], event[2]
