"""`lav2 serve`: an OpenAI-compatible chat API with request batching, and a chat page, on FastAPI + uvicorn.

  schema   request body (pydantic), `Limits`, `Defaults`, `ApiError` (status + OpenAI error body)
  inputs   messages → the checkpoint's chat template, data-URL images → model pixels, budgets (`Prepared`)
  decode   `BatchDecode`: batched prefill + step-wise decode with per-row budgets and stops (`StopStreamer`)
  batcher  `Batcher`: bounded FIFO queue, gathering into engine calls, one worker thread, engine-call counter
  sse      response bodies: `chat.completion` and server-sent `chat.completion.chunk` events
  app      `create_app(bundle, ServeSettings)`: the routes (/v1/chat/completions, /v1/models, /health, /)
  server   bind a socket, run uvicorn (`serve`), or in a background thread (`ServerThread`)
  static/index.html  the chat page

Needs the `serve` extra (`pip install -e ".[serve]"`): fastapi, uvicorn (httpx and selenium for the tests).
"""
