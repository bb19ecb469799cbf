"""The lab's web server: Starlette on uvicorn, a JSON API over ``Lab`` and server-sent events.

    GET  /                    the page (static/index.html; static files under /static)
    GET  /api/info            datasets, shipped specs, knobs, status
    GET  /api/zoo?data=NAME   zoo models that run on the dataset
    POST /api/table           {"text", "data"} -> the Build view's per-layer table
    POST /api/model           {"data", "spec"} or {"data", "zoo"} -> build the network
    POST /api/train/start     {knobs} (409 while training)       POST /api/train/{pause,resume,stop}
    POST /api/knobs           {lr, momentum, batch_size, weight_decay, optimizer}: next step
    GET  /api/events          server-sent events: training points and status, ~10 per second
    GET  /api/inside?index=I  activations, first filters, probabilities for test image I
    GET  /api/conv?...        one conv output neuron, the dot product written out
    POST /api/predict         {"pixels": rows} -> MNIST-like 28x28 and the probabilities
    GET  /api/runs            POST /api/save {"name"}   POST /api/load {"name"}

A user's mistake is answered 400 with ``{"error": sentence}``; a request the training job's state
forbids, 409. Handlers are plain functions run in Starlette's thread pool (torch work must not
block the event loop).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cnnlab.errors import CnnlabError
from cnnlab.lab.core import Busy, Lab

STATIC = Path(__file__).with_name("static")
EVENT_SECONDS = 0.1
MAX_BODY = 2_000_000


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise CnnlabError(f"request body of {len(raw):,} bytes; at most {MAX_BODY:,} are accepted")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        raise CnnlabError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise CnnlabError("the request body must be a JSON object")
    return body


def _int(request: Request, key: str, default: int | None = None) -> int:
    value = request.query_params.get(key)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CnnlabError(f"{key} must be an integer; received {str(value)[:20]!r}") from None


def create_app(lab: Lab) -> Starlette:
    def api(handler):
        async def endpoint(request: Request) -> Response:
            try:
                result = await handler(request)
            except Busy as e:
                return JSONResponse({"error": str(e)}, status_code=409)
            except CnnlabError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            return JSONResponse(result)
        return endpoint

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def info(request):
        return await run_in_threadpool(lab.info)

    async def zoo(request):
        return {"models": await run_in_threadpool(lab.zoo, request.query_params.get("data", ""))}

    async def table(request):
        body = await _body(request)
        text = body.get("text", "")
        if not isinstance(text, str):
            raise CnnlabError("text must be the layer list as JSON or YAML text")
        return await run_in_threadpool(lab.table, text, body.get("data"))

    async def model(request):
        return await run_in_threadpool(lab.set_model, await _body(request))

    async def start(request):
        return await run_in_threadpool(lab.start, await _body(request))

    async def control(request):
        return await run_in_threadpool(lab.control, request.path_params["action"])

    async def knobs(request):
        return await run_in_threadpool(lab.set_knobs, await _body(request))

    async def inside(request):
        return await run_in_threadpool(lab.inside, _int(request, "index", 0))

    async def conv(request):
        args = [_int(request, k, 0) for k in ("index", "layer", "channel", "y", "x", "in_channel")]
        return await run_in_threadpool(lab.conv, *args)

    async def predict(request):
        return await run_in_threadpool(lab.predict, (await _body(request)).get("pixels"))

    async def runs(request):
        return {"runs": await run_in_threadpool(lab.runs), "work_dir": str(lab.work_dir)}

    async def save(request):
        return await run_in_threadpool(lab.save, (await _body(request)).get("name"))

    async def load(request):
        return await run_in_threadpool(lab.load, (await _body(request)).get("name"))

    async def events(request: Request) -> Response:
        async def stream():
            sent = 0
            version = None
            while True:  # one message at least, then until the lab closes or the page goes
                points, total = lab.points_since(sent)
                status = lab.status()
                if status["version"] != version:  # a new network: start from its first point
                    version, points, total = status["version"], *lab.points_since(0)
                sent = total
                payload = {"status": status, "points": points, "server_time": time.time()}
                yield f"data: {json.dumps(payload)}\n\n"
                if lab.closed or await request.is_disconnected():
                    break
                await asyncio.sleep(EVENT_SECONDS)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", index),
        Route("/api/info", api(info)),
        Route("/api/zoo", api(zoo)),
        Route("/api/table", api(table), methods=["POST"]),
        Route("/api/model", api(model), methods=["POST"]),
        Route("/api/train/start", api(start), methods=["POST"]),
        Route("/api/train/{action}", api(control), methods=["POST"]),
        Route("/api/knobs", api(knobs), methods=["POST"]),
        Route("/api/inside", api(inside)),
        Route("/api/conv", api(conv)),
        Route("/api/predict", api(predict), methods=["POST"]),
        Route("/api/runs", api(runs)),
        Route("/api/save", api(save), methods=["POST"]),
        Route("/api/load", api(load), methods=["POST"]),
        Route("/api/events", events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.lab = lab
    return app


def make_server(lab: Lab, *, host: str = "127.0.0.1", port: int = 8000):
    """A uvicorn server for ``lab`` (call ``.run()``, or ``.serve()`` in an event loop)."""
    import uvicorn

    config = uvicorn.Config(create_app(lab), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=2, lifespan="off")
    return uvicorn.Server(config)


def serve(lab: Lab, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C; then stop training after its current step. A run being saved is
    either complete or absent (see ``Lab.save``)."""
    server = make_server(lab, host=host, port=port)
    try:
        server.run()
    finally:
        lab.shutdown()
