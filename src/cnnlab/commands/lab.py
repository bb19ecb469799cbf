"""``cnnlab lab``: start the local web app (build, train live, look inside, draw, save)."""
from __future__ import annotations

import argparse
import sys

from cnnlab.errors import CnnlabError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "lab", help="the local web app: build a network, train it live, look inside it",
        description="Start a local server with the lab page (build a layer list or pick a zoo model, train "
                    "live with knobs, look at activations and filters, the convolution explained, draw a "
                    "digit, save the run). It binds 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only); anything else is reachable "
                        "from the network, with no authentication")
    p.add_argument("--dir", default="runs", metavar="DIR",
                   help="the only directory the page may save runs to and load runs from (default runs)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset cache (default ~/.cache/cnnlab)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(func=_cmd_lab)


def _cmd_lab(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CnnlabError("cnnlab lab needs starlette and uvicorn; install them with "
                          "`python -m pip install 'cnnlab[lab]'`") from None
    if not 0 <= args.port <= 65535:
        raise CnnlabError(f"--port must be 0..65535; received {args.port}")
    from cnnlab.lab import Lab
    from cnnlab.lab.server import make_server
    from cnnlab.train.engine import resolve_device

    resolve_device(args.device)
    if args.host not in LOCAL_HOSTS:
        print(f"cnnlab: warning: binding {args.host}: anyone who can reach this machine can use the lab "
              f"(train, save and load runs in {args.dir}); there is no authentication", file=sys.stderr)
    lab = Lab(args.dir, data_root=args.data_root, device=args.device)
    server = make_server(lab, host=args.host, port=args.port)

    def announce() -> None:
        sockets = [s for srv in getattr(server, "servers", []) for s in srv.sockets]
        port = sockets[0].getsockname()[1] if sockets else args.port
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"cnnlab lab: http://{host}:{port}/  (runs are saved in {lab.work_dir}; Ctrl-C to stop)", flush=True)

    server.config.callback_notify = None
    _run(server, lab, announce)
    return 0


def _run(server, lab, announce) -> None:
    import asyncio

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            announce()
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        lab.shutdown()  # training stops after its current step; no run is left half-written
        print("cnnlab lab: stopped", file=sys.stderr, flush=True)
