"""HTTP reward endpoint (FastAPI + uvicorn).

* ``POST /score``      ``{"items": [{"prompt": "...", "response": "..."}, ...]}``
                       -> ``{"results": [{"reward": r, "dimensions": {...}, "gates": {...}}, ...]}``
* ``POST /get_reward`` OpenRLHF remote-RM protocol: ``{"query": ["<prompt+response>", ...], "prompts": [...]}``
                       -> ``{"rewards": [...], "scores": [...], "extra_logs": {"dimensions": [...], "gates": [...]}}``.
                       With ``prompts``, each query must start with its prompt and the rest is the response;
                       without, the whole query is scored as a response to an empty prompt.
* ``GET /health``      ``{"status": "ok", "dimensions": [...]}``

Requests larger than ``max_request_bytes`` get 413, more than ``max_batch_size`` items 413, bad JSON or
bad fields 400 (with the reason in ``detail``).
"""

from __future__ import annotations

import json
import threading

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_REQUEST_BYTES = 2_000_000


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPException(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        except ValueError:
            raise HTTPException(400, "invalid Content-Length header") from None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(400, f"malformed JSON body: {error}") from None


def _string_list(payload: dict, key: str, required: bool = True) -> list[str] | None:
    value = payload.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HTTPException(400, f"'{key}' must be a list of strings")
    return value


def create_app(scorer, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    app = FastAPI(title="SRM reward server")
    lock = threading.Lock()  # one forward pass at a time; torch already uses every core for it

    def score_locked(items):
        with lock:
            return scorer.score(items)

    def check_batch(n: int) -> None:
        if n == 0:
            raise HTTPException(400, "empty batch")
        if n > max_batch_size:
            raise HTTPException(413, f"batch of {n} items exceeds the limit of {max_batch_size}")

    @app.get("/health")
    def health():
        return {"status": "ok", "dimensions": scorer.dimension_names}

    @app.post("/score")
    async def score(request: Request):
        payload = await _read_json(request, max_request_bytes)
        items = payload.get("items") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise HTTPException(400, "body must be {\"items\": [{\"prompt\": str, \"response\": str}, ...]}")
        check_batch(len(items))
        pairs = []
        for index, item in enumerate(items):
            if not (isinstance(item, dict) and isinstance(item.get("prompt"), str)
                    and isinstance(item.get("response"), str)):
                raise HTTPException(400, f"items[{index}] must be {{\"prompt\": str, \"response\": str}}")
            pairs.append((item["prompt"], item["response"]))
        results = await run_in_threadpool(score_locked, pairs)
        return {"results": [r.to_dict() for r in results]}

    @app.post("/get_reward")
    async def get_reward(request: Request):
        payload = await _read_json(request, max_request_bytes)
        if not isinstance(payload, dict):
            raise HTTPException(400, "body must be a JSON object with 'query'")
        queries = _string_list(payload, "query")
        prompts = _string_list(payload, "prompts", required=False)
        check_batch(len(queries))
        if prompts is not None and len(prompts) != len(queries):
            raise HTTPException(400, f"'prompts' has {len(prompts)} entries but 'query' has {len(queries)}")
        pairs = []
        for index, query in enumerate(queries):
            if prompts is None:
                pairs.append(("", query))
            elif query.startswith(prompts[index]):
                pairs.append((prompts[index], query[len(prompts[index]):]))
            else:
                raise HTTPException(400, f"query[{index}] does not start with prompts[{index}]")
        results = await run_in_threadpool(score_locked, pairs)
        rewards = [r.reward for r in results]
        return {"rewards": rewards, "scores": rewards,
                "extra_logs": {"dimensions": [r.dimensions for r in results], "gates": [r.gates for r in results]}}

    return app


def run_server(scorer, host: str = "127.0.0.1", port: int = 8000, **limits) -> None:
    import uvicorn

    uvicorn.run(create_app(scorer, **limits), host=host, port=port, log_level="info")
