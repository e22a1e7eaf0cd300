"""`lav2 serve` through a real HTTP client (httpx) against servers on free 127.0.0.1 ports, tiny random checkpoint.

Answers equal `lav2 generate`'s greedy output (whole and streamed, image as a data URL); every limit answers its
status code and the server keeps answering; 16 simultaneous requests are all correct in fewer engine calls than
requests, with a full queue answering 503 + Retry-After; a client that disconnects stops its generation.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from lav2_jax.core import templates
from lav2_jax.checkpoint import load_pretrained
from lav2_jax.cli.main import main
from lav2_jax.serve.app import ServeSettings, create_app
from lav2_jax.serve.schema import Defaults, Limits
from lav2_jax.serve.server import ServerThread
from serve_utils import SYSTEM, Gate, body, data_url, png_bytes, user, write_checkpoint

LIMITS = Limits(max_body_bytes=256 * 1024, max_image_bytes=64 * 1024, max_image_pixels=64 * 64, max_tokens=480)
KEY = "s3cret-token"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    ckpt = write_checkpoint(root)
    image = root / "cat.png"
    image.write_bytes(png_bytes(40, 30))
    bundle = load_pretrained(ckpt, layout="unstacked")
    settings = ServeSettings(model_name="tiny", limits=LIMITS, defaults=Defaults(system=SYSTEM), max_batch=8,
                             max_queue=16)
    app = create_app(bundle, settings)
    keyed = create_app(bundle, ServeSettings(model_name="tiny", api_key=KEY))
    with ServerThread(app) as server, ServerThread(keyed) as keyed_server:
        client = httpx.Client(base_url=server.url, timeout=600)  # generous: CI machines are shared
        yield {"ckpt": ckpt, "image": str(image), "url": data_url(image.read_bytes()), "bundle": bundle,
               "app": app, "client": client, "server": server, "keyed": keyed_server}
        client.close()


def cli_answer(capsys, env, prompt: str, max_new: int) -> str:
    """`lav2 generate --raw` greedy output for `prompt`, as the chat API returns it (cut at "###", lstripped)."""
    rc = main(["generate", "--ckpt", env["ckpt"], "--image", env["image"], "--raw", "--prompt", prompt,
               "--temperature", "0", "--max-new-tokens", str(max_new)])
    out = capsys.readouterr().out
    assert rc == 0
    text = out[:-1]  # the CLI's final newline
    text = text.lstrip()
    return text[:text.index(templates.CHAT_SEP)] if templates.CHAT_SEP in text else text


def stream_lines(client, payload):
    with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def stats(client) -> dict:
    return client.get("/health").json()


def assert_still_serving(env):
    r = env["client"].post("/v1/chat/completions", json=body([user("the cat", env["url"])], max_tokens=4))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


def test_answers_equal_lav2_generate(env, capsys):
    client = env["client"]
    messages = [user("the cat", env["url"])]
    prompt = templates.chat_prompt([("human", "the cat")], SYSTEM)
    want = cli_answer(capsys, env, prompt, 12)
    r = client.post("/v1/chat/completions", json=body(messages, max_tokens=12, model="tiny"))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["object"] == "chat.completion" and got["model"] == "tiny"
    assert got["choices"][0]["message"] == {"role": "assistant", "content": want}
    n_prompt = len(env["bundle"].tokenizer.encode(prompt, bos=True, eos=False))
    assert got["usage"]["prompt_tokens"] == n_prompt and got["usage"]["completion_tokens"] <= 12

    lines = stream_lines(client, body(messages, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(pieces) == want and sum(1 for p in pieces if p) > 1  # streamed in several chunks
    assert chunks[-2]["choices"][0]["finish_reason"] == got["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == got["usage"]

    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert "lav2 serve" in client.get("/").text


def _big_text(n_words: int) -> str:
    return " ".join(["the cat sat on the mat"] * (n_words // 6))


CASES = [  # (name, payload or raw bytes, status, text in the message)
    ("not JSON", b"{oops", 400, "not valid JSON"),
    ("no messages", {"messages": []}, 400, "messages"),
    ("bad role order", {"messages": [{"role": "assistant", "content": "x"}]}, 400, "expected a user message"),
    ("negative temperature", {"messages": [user("x")], "temperature": -1}, 400, "temperature"),
    ("max_tokens over the limit", {"messages": [user("x")], "max_tokens": 481}, 400, "limit of 480"),
    ("n > 1", {"messages": [user("x")], "n": 2}, 400, "n=1"),
    ("unknown model", {"messages": [user("x")], "model": "gpt-4"}, 404, "not served here"),
    ("prompt too long", {"messages": [user(_big_text(700))]}, 400, "at most 511"),
    ("http image URL", {"messages": [user("x", "https://example.com/cat.png")]}, 400, "never fetches"),
    ("file URL", {"messages": [user("x", "file:///etc/passwd")]}, 400, "only data URLs"),
    ("server path", {"messages": [user("x", "/etc/passwd")]}, 400, "only data URLs"),
    ("bad base64", {"messages": [user("x", "data:image/png;base64,@@@@")]}, 400, "base64"),
    ("not an image", {"messages": [user("x", data_url(b"hello world"))]}, 400, "not a readable image"),
    ("two images", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}, 400, "one image"),
    ("image bytes over the limit", {"messages": [user("x", data_url(png_bytes(200, 200)))]}, 413, "65536 bytes"),
    ("image pixels over the limit", {"messages": [user("x", data_url(png_bytes(100, 100, noise=False)))]}, 413,
     "10000 pixels"),
    ("body over the limit", {"messages": [user("x" * (300 * 1024))]}, 413, "262144 bytes"),
]


@pytest.mark.parametrize("name, payload, status, message", CASES, ids=[c[0] for c in CASES])
def test_every_limit_is_answered_and_the_server_keeps_serving(env, name, payload, status, message):
    client = env["client"]
    if isinstance(payload, bytes):
        r = client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == status, (name, r.text)
    assert message in r.json()["error"]["message"], r.text
    assert_still_serving(env)


def test_bearer_token(env):
    url = env["keyed"].url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.get(url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert httpx.post(url + "/v1/chat/completions", json=body([user("x")]), headers=headers).status_code == 401
    ok = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(url + "/v1/models", headers=ok).json()["data"][0]["id"] == "tiny"
    assert httpx.get(url + "/health").status_code == 200  # health needs no key


def _wait(client, **want):
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        s = stats(client)
        if all(s[k] == v for k, v in want.items()):
            return s
        time.sleep(0.02)
    raise AssertionError(f"server never reached {want}: {stats(client)}")


def test_16_simultaneous_requests_fewer_engine_calls_and_a_bounded_queue(env):
    from lav2_jax.inference.experts import load_for_model
    from lav2_jax.inference.streaming import stream_text

    client, bundle = env["client"], env["bundle"]
    questions = ["the cat", "a dog ran", "the red ball", "in the park"]
    pixels = load_for_model(bundle, env["image"])
    want = {}
    for q in questions:  # the single-row streaming path `lav2 generate` takes (same engine functions)
        prompt = templates.chat_prompt([("human", q)], SYSTEM)
        want[q] = "".join(stream_text(bundle, prompt, pixels, stop=templates.CHAT_SEP, lstrip=True,
                                      max_new_tokens=8, temperature=0))
    before = stats(client)
    batcher = env["app"].state.batcher
    with Gate(batcher) as gate, concurrent.futures.ThreadPoolExecutor(17) as pool:
        held = pool.submit(client.post, "/v1/chat/completions", json=body([user("the cat", env["url"])]))
        _wait(client, running=1, queued=0)  # an engine call is running (held at the gate)
        futures = [pool.submit(client.post, "/v1/chat/completions",
                               json=body([user(questions[i % 4], env["url"])]))
                   for i in range(16)]
        _wait(client, queued=16)  # 16 simultaneous requests wait: the queue (max 16) is full
        r = client.post("/v1/chat/completions", json=body([user("x", env["url"])]))
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "busy" in r.json()["error"]["message"]
        gate.open()
        answers = [f.result() for f in futures]
        assert held.result().status_code == 200
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want[questions[i % 4]]
    after = stats(client)
    assert after["engine_calls"] - before["engine_calls"] == 3  # the held one, then 8 + 8 (max_batch 8) for 16
    assert after["largest_batch"] == 8
    assert_still_serving(env)


def test_a_client_that_disconnects_stops_its_generation(env):
    client = env["client"]
    before = stats(client)
    with client.stream("POST", "/v1/chat/completions",
                       json=body([user("the cat", env["url"])], max_tokens=480, stream=True)) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break  # leave after two tokens: closes the connection
    after = _wait(client, running=0, cancelled=before["cancelled"] + 1)
    assert after["tokens"] - before["tokens"] < 480  # the row stopped early (else it would make all 480)

    batcher = env["app"].state.batcher  # a whole (non-streamed) request that goes away while it waits
    with Gate(batcher) as gate:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/v1/chat/completions", json=body([user("the cat", env["url"])]))
            _wait(client, running=1)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(env["server"].url + "/v1/chat/completions", json=body([user("a dog", env["url"])]),
                           timeout=1.0)
            _wait(client, queued=0, cancelled=before["cancelled"] + 2)
            gate.open()
            assert first.result().status_code == 200
    assert_still_serving(env)


def test_lav2_serve_command(env, tmp_path):
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "lav2_jax.cli.main", "serve", "--ckpt", env["ckpt"], "--port",
                             "0", "--api-key-file", str(key), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("lav2 serve: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[2]
        assert "(model tiny-ckpt)" in line
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
        models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
        assert models["data"][0]["id"] == "tiny-ckpt"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bad_api_key_file_is_a_user_error(env, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (str(empty), str(tmp_path / "missing")):
        rc = main(["serve", "--ckpt", env["ckpt"], "--api-key-file", path])
        err = capsys.readouterr().err
        assert rc == 2 and "--api-key-file" in err and len(err.strip().splitlines()) == 1, err
