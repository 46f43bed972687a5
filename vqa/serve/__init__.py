"""``vqa serve``: a local web page and JSON API answering questions about your own images.

The run is loaded once (``vqa.serve.engine.Engine``: model, vocabularies, tokenizer, backbone),
then FastAPI (``vqa.serve.app``) serves it through uvicorn on one socket, 127.0.0.1 by default.
Requests are micro-batched on the engine's inference thread, and the features of each image
are cached by the sha256 of its bytes (``vqa.serve.cache``); a run on detector regions takes
each photo's regions from a file sent with it (``vqa.photo_regions``). The answers are those of
``vqa predict`` for the same image and question. Ctrl-C or SIGTERM stops the server cleanly:
requests in flight are answered (a second Ctrl-C answers those still waiting with a 503 at
once), the inference thread ends, and the command exits with status 0; idle connections are
closed after a few seconds, and open connections are bounded (``vqa.serve.server``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import Callable

from vqa.errors import VQAError
from vqa.serve.uploads import Limits

__all__ = ["serve", "bind", "Limits"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free one).

    Raises:
        VQAError: the port is taken, not allowed, or the host is not an address of this machine.
    """
    if not 0 <= port <= 65535:
        raise VQAError(f"--port {port} is not a TCP port; pass a number from 1 to 65535 (0 picks a free one).")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
        # every response (headers, then body) waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as error:
        raise VQAError(f"--host {host} cannot be used ({error.strerror}); pass 127.0.0.1.") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise VQAError(f"port {port} on {host} is already in use (another `vqa serve`?); "
                           "pass another --port, or stop the other server.") from None
        if error.errno == errno.EACCES:
            raise VQAError(f"port {port} needs administrator rights; pass a --port above 1023.") from None
        raise VQAError(f"cannot listen on {host}:{port} ({error.strerror or error}); "
                       "pass --host 127.0.0.1 or an address of this machine.") from None
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          log: Callable[[str], None] = print) -> int:
    """Serve the run's page and API until Ctrl-C (or SIGTERM); 0 after a clean shutdown.

    Args:
        run_dir: the run folder (``vqa train --out``).
        host: the address to listen on; anything but a loopback address is reachable from other machines.
        port: the TCP port (0: a free one, printed).
        limits: what one request may send.
        log: where the status lines go.

    Raises:
        VQAError: the folder is not a usable run, or the port cannot be used.
    """
    from vqa import backbone as backbone_lib
    from vqa.photo_regions import reads_detector_regions
    from vqa.predict import check_grid_backbone
    from vqa.run_folder import check_run_dir
    from vqa.serve.app import create_app
    from vqa.serve.engine import Engine
    from vqa.serve.gallery import run_gallery
    from vqa.serve.server import Server, server_config

    run_dir = Path(run_dir)
    run = check_run_dir(run_dir)  # a wrong folder is said before anything is loaded
    if run.model != "question-only" and not reads_detector_regions(run.features):  # those bring their regions
        spec = backbone_lib.check_backbone(run_dir)
        if run.features != "fc7":
            check_grid_backbone(run_dir, run, spec)
    if not _is_loopback(host):
        log(f"warning: --host {host} makes the server reachable from other machines on your network, and it has "
            "no login, so anyone who can reach this machine can use it; use it only on a network you trust.")
    sock = bind(host, port)
    try:
        log(f"loading {run_dir} ...")
        engine = Engine(run_dir)
        gallery = run_gallery(run_dir)
        app = create_app(engine, gallery, limits)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log(f"serving {run_dir.name} ({run.model}, {len(gallery)} run images to pick) at http://{shown}:{bound_port}/ "
            f"(API docs at http://{shown}:{bound_port}/docs); press Ctrl-C to stop.")
        try:
            Server(server_config(app), log=log).run(sockets=[sock])
        finally:
            engine.close()
    finally:
        sock.close()
    log("server stopped.")
    return 0
