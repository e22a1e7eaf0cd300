"""From a validated chat request to what the engine takes: the templated prompt, the model image, the budget.

Messages → the checkpoint's chat template (`chat_format`): system/developer messages (first, joined by "\n") are
the system text (none: the template's default), then user/assistant turns that alternate, start with a user turn
and end with one. The template is the one `lav2 chat` uses for the checkpoint's system
(`lav2_jax.inference.prompts.chat_prompt` / `chat_stop` on `model.adapter`; LLaMA-Adapter V2: docs/design.md §3.3.2
"###Human: …###Assistant:", a reply ending at EOS or "###"); the reply's leading whitespace (the template's space
after the assistant tag) is dropped, as in `lav2_jax.inference.chat`.

Images: at most one per request (the model fuses one image into the whole prompt, wherever the part appears), only
as a data URL ``data:image/<type>;base64,<data>``. http(s) URLs are refused with 400 (the server never fetches),
and so is anything else (a file path or file:// URL: a request never names a path on the server's disk). The
decoded bytes and the pixel count (read from the header before decoding) are capped (413); then
`lav2_jax.data.images.decode` + `inference.experts.load_for_model` give float32 [S, S, 3] as every front end does.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from lav2_jax.data.images import ImageError, decode
from lav2_jax.inference import prompts as system_templates
from lav2_jax.inference.engine import bucket
from lav2_jax.inference.experts import load_for_model
from lav2_jax.inference.generation import encode_prompts
from lav2_jax.serve.schema import ApiError, ChatRequest, Defaults, Limits, TextPart


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """How a checkpoint renders a conversation: `render(turns, system)` → prompt, and the turn-ending `stop`."""

    name: str
    render: Callable[[Sequence[tuple[str, str]], Optional[str]], str]
    stop: str


def chat_format(bundle, image: bool) -> ChatFormat:
    """The chat template of `bundle`'s checkpoint (its adapter's `system`), for a request with or without image."""
    adapter = bundle.model.adapter
    name = getattr(adapter, "system", "lav2")
    return ChatFormat(name, lambda turns, system: system_templates.chat_prompt(adapter, turns, system, image),
                      system_templates.chat_stop(adapter))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One request, ready for the batcher. `key` groups rows one engine call may share (sampling + shape)."""

    prompt: str
    prompt_tokens: int
    image: Optional[np.ndarray]  # [S, S, 3] float32
    budget: int  # new tokens this row may produce (max_tokens, capped at the context)
    temperature: float
    top_p: float
    seed: Optional[int]
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool

    @property
    def key(self) -> tuple:
        sampling = ("greedy",) if self.temperature == 0 else ("sample", self.temperature, self.top_p, self.seed)
        return sampling + (bucket(self.prompt_tokens),)


def data_url_bytes(url: str, limits: Limits, where: str) -> bytes:
    """`data:image/…;base64,…` → the image file's bytes; every other kind of URL or a path → ApiError."""
    if url.startswith(("http://", "https://")):
        raise ApiError(400, f"{where}: http(s) image URLs are refused: this server never fetches URLs; send the "
                            "image inline as a data URL (data:image/png;base64,...)", param=where,
                       code="image_url_not_supported")
    if not url.startswith("data:"):
        raise ApiError(400, f"{where}: only data URLs (data:image/png;base64,...) are accepted; the server never "
                            "reads files or fetches URLs", param=where, code="image_url_not_supported")
    header, comma, payload = url[5:].partition(",")
    if not comma or not header.endswith(";base64") or not header.startswith("image/"):
        raise ApiError(400, f"{where}: expected data:image/<type>;base64,<data>", param=where)
    if len(payload) > (limits.max_image_bytes + 2) // 3 * 4 + 4:
        raise ApiError(413, f"{where}: the image is over this server's limit of {limits.max_image_bytes} bytes",
                       param=where, code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: the data URL is not valid base64", param=where) from None
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"{where}: the image is {len(data)} bytes; this server's limit is "
                            f"{limits.max_image_bytes} bytes", param=where, code="image_too_large")
    return data


def model_image(bundle, data: bytes, limits: Limits, where: str) -> np.ndarray:
    """Image file bytes → the model's preprocessed float32 [S, S, 3]; pixel count checked before decoding."""
    vision = bundle.model.vision
    if vision is None:
        raise ApiError(400, f"{where}: this model is text-only (no vision tower); it cannot take an image",
                       param=where)
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(400, f"{where}: not a readable image (corrupt or unknown format)", param=where) from None
    if width * height > limits.max_image_pixels:
        raise ApiError(413, f"{where}: the image has {width}x{height} = {width * height} pixels; this server's "
                            f"limit is {limits.max_image_pixels}", param=where, code="image_too_large")
    try:
        return load_for_model(bundle, decode(data, name=where))  # size, channel order, LLaVA's pad
    except ImageError as e:
        raise ApiError(400, str(e), param=where) from None


def conversation(req: ChatRequest) -> tuple[Optional[str], list[tuple[str, str]], Optional[tuple[str, str]]]:
    """(system text or None, turns [(role, text)], (image URL, its field) or None) of the request's messages."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    image = None
    for i, m in enumerate(req.messages):
        parts = [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        texts = []
        for j, part in enumerate(parts):
            if isinstance(part, TextPart):
                texts.append(part.text)
                continue
            where = f"messages[{i}].content[{j}].image_url"
            if m.role != "user":
                raise ApiError(400, f"{where}: images are accepted in user messages only", param=where)
            if image is not None:
                raise ApiError(400, f"{where}: at most one image per request (this model sees one image for the "
                                    "whole conversation)", param=where)
            image = (part.url, where)
        text = "\n".join(texts)
        if m.role in ("system", "developer"):
            if turns:
                raise ApiError(400, f"messages[{i}]: system messages must come before the conversation",
                               param=f"messages[{i}]")
            system.append(text)
            continue
        role = "human" if m.role == "user" else "assistant"
        expected = "human" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ApiError(400, f"messages[{i}]: expected a {'user' if expected == 'human' else 'assistant'} "
                                "message (turns alternate user/assistant, starting with user)",
                           param=f"messages[{i}]")
        turns.append((role, text))
    if not turns or turns[-1][0] != "human":
        raise ApiError(400, "messages: the conversation must end with a user message", param="messages")
    return ("\n".join(system) if system else None), turns, image


def prepare_request(bundle, req: ChatRequest, limits: Limits, defaults: Defaults) -> Prepared:
    """Validates a request against the model and the limits (ApiError 400/413) → Prepared."""
    system, turns, image = conversation(req)
    fmt = chat_format(bundle, image is not None)
    prompt = fmt.render(turns, system if system is not None else defaults.system)
    n = len(encode_prompts(bundle.tokenizer, [prompt])[0])
    context = bundle.model.config.max_seq_len
    cap = min(limits.max_prompt_tokens or context - 1, context - 1)
    if n > cap:
        raise ApiError(400, f"messages: the prompt is {n} tokens with the chat template; this server accepts at "
                            f"most {cap} (the model's context is {context})", param="messages",
                       code="context_length_exceeded")
    pixels = None
    if image is not None:
        url, where = image
        pixels = model_image(bundle, data_url_bytes(url, limits, where), limits, where)
    asked = req.max_completion_tokens or req.max_tokens or defaults.max_tokens
    return Prepared(
        prompt=prompt, prompt_tokens=n, image=pixels, budget=min(asked, limits.max_tokens, context - n),
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_p=defaults.top_p if req.top_p is None else req.top_p, seed=req.seed,
        stops=(fmt.stop, *req.stops()), stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage))
