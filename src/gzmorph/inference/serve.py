"""``gzmorph serve RUN``: a small local web page that answers the decision tree for one dropped galaxy image.

Standard library only (``http.server``): the page is one self-contained HTML file (``gzmorph/inference/web/index.html``, no
external fetches) and the API is two JSON endpoints:

    GET  /             the page
    GET  /api/info     the model being served (name, weights and their SHA-256, TTA, crop and size, version, limits)
    POST /api/predict  the image file, either as the raw body with header ``X-Filename`` = its name (URL-encoded;
                       gives the suffix), or as the field ``file`` of a ``multipart/form-data`` form (``curl -F
                       file=@x.jpg``) -> the 37 values, the most likely path, every question's answers, a preview PNG

The model is loaded once. Each connection has its own thread; the model runs in one thread at a time (a module is
not safe to call from several threads at once, and one forward pass already uses every core), on every upload that
is waiting for it at once (one batch, up to ``BATCH_LIMIT``). At most ``QUEUE_LIMIT`` uploads are admitted at a time
(being read, decoded, waiting for the model or in it); one more is answered 503 with ``Retry-After`` at once, before
its body is read, instead of waiting behind an ever longer queue. Hostile clients cost one thread for a bounded time:
a request must arrive whole within ``REQUEST_SECONDS``, and a body over ``MAX_UPLOAD_BYTES`` is refused from its
Content-Length alone.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

from .. import pretrained, runs, tree
from ..data.images import IMAGE_SUFFIXES, decode, image_suffix
from ..errors import BadArgument, BadImage, GzmorphError
from ..precision import pick_device
from ..version import __version__
from .inference_queue import QUEUE_LIMIT, Busy, InferenceQueue
from .predict import galaxy_id
from .tta import check_tta, predict_answers
from .uploads import BadUpload, form_file

log = logging.getLogger("gzmorph")

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # far above any galaxy cutout; stops a stray upload from filling memory
# The kernel's queue of connections not yet accepted. The standard library's 5 overflowed at 16 simultaneous
# clients, and an overflowing listen queue answers with resets; Linux caps it at net.core.somaxconn (4096).
LISTEN_BACKLOG = 1024
REQUEST_SECONDS = 60.0  # a client must send its whole request (headers and body) within this (slowloris)
IDLE_SECONDS = 20.0  # ...and may not go silent for longer than this at any time, while sending or receiving
LINGER_SECONDS = 2.0  # after an answer given before the body was read, how long the unread body is still drained
PREVIEW_SIDE = 256  # the page shows the uploaded image at most this many pixels across
# Pillow modes whose pixels are already display values; others (F, I, I;16: FITS, 16-bit PNG) are raw counts.
DISPLAY_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def _page() -> bytes:
    try:
        return (resources.files("gzmorph.inference") / "web" / "index.html").read_bytes()
    except (FileNotFoundError, NotADirectoryError) as e:
        raise GzmorphError(f"the web page gzmorph/inference/web/index.html is missing from this installation ({e}); "
                           f"reinstall gzmorph") from None


def _suffix(name: str) -> str:
    """The upload's file type as a suffix for the temporary file (decode goes by it for FITS); two parts for
    compressed files such as ``.fits.gz``."""
    suffix = image_suffix(name)
    # Only a plain suffix is ever put in a path: a name like "x.j/../pg" cannot reach outside the temp folder.
    return suffix if len(suffix) <= 16 and all(c.isalnum() or c == "." for c in suffix) else ""


def _png_data_url(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _upscaled(pixels: np.ndarray, side: int = PREVIEW_SIDE) -> Image.Image:
    """The model-input pixels enlarged by a whole factor (nearest: every pixel stays a visible square)."""
    factor = max(1, side // max(pixels.shape[:2]))
    im = Image.fromarray(np.ascontiguousarray(pixels))
    return im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)


def _preview(data: bytes, pixels: np.ndarray) -> str:
    """The whole uploaded image at most PREVIEW_SIDE px across, or the model's input where Pillow cannot read the
    file (FITS)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in DISPLAY_MODES:  # raw counts (FITS, 16-bit PNG): decode() knows how to scale them
                return _png_data_url(_upscaled(pixels))
            im.draft("RGB", (PREVIEW_SIDE, PREVIEW_SIDE))  # JPEG: let libjpeg decode small; a no-op otherwise
            im = im.convert("RGB")
            im.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
            return _png_data_url(im)
    except Exception:  # noqa: BLE001 - decode() has already accepted the file; the preview is only for display
        return _png_data_url(_upscaled(pixels))


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, read with a deadline for the whole request as well as a limit on each silence: a client
    that sends one byte every few seconds (slowloris) is cut off at the deadline, not kept forever."""

    def __init__(self, sock: socket.socket, seconds: float, idle: float):
        self.sock, self.deadline, self.idle = sock, time.monotonic() + seconds, idle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(min(self.idle, left))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.idle)  # the answer is written under the idle limit alone, however late it is


class Predictor:
    """One loaded model and what the page needs from it."""

    def __init__(self, run: str | Path, which: str = "best", device: str = "auto", tta: int = 8,
                 precision: str = "auto", index: str | Path | None = None, images: str | Path | None = None,
                 k: int = 8, queue_limit: int = QUEUE_LIMIT):
        check_tta(tta)
        self.run = runs.run_folder(run)
        # What the log and the page call it: the packaged model by its name, not by its unpacked cache folder.
        self.name = pretrained.NAME if pretrained.is_alias(run) else str(run)
        self.loaded = runs.load_model(self.run, which, pick_device(device), precision)
        if self.loaded.config.task:
            raise BadArgument(f"{self.run} is fine-tuned on its own columns; the page answers the 37 Galaxy Zoo "
                              f"questions. Predict its columns with `gzmorph predict {self.run} IMAGES`")
        self.device = self.loaded.policy.device
        self.prep = self.loaded.prep
        self.tta = tta
        self.neighbours = None
        if index is not None:  # "galaxies like this one": the index's run must be this one
            from .similar import Index, check_same_run, open_features

            features = open_features(index)
            check_same_run(features, self.loaded)
            self.neighbours = (features, Index(features), images, k)
        self._lock = threading.Lock()  # the model, for one thread at a time
        # Decoding is CPU-bound, so more decodes at once than cores gain nothing, and each may briefly hold a large
        # image (Pillow refuses only those over twice its 64-megapixel limit): admitted uploads take turns.
        self._decoding = threading.BoundedSemaphore(len(os.sched_getaffinity(0)))
        self.queue = InferenceQueue(self._forward, self._lock, queue_limit)

    def info(self) -> dict:
        cfg = self.loaded.config
        run = self.name if self.name == pretrained.NAME else (self.run.name or str(self.run))
        return {"run": run, "model": cfg.model, "weights": self.loaded.weights.name,
                "sha256": self.loaded.sha256, "tta": self.tta, "crop": self.prep.crop, "size": self.prep.size,
                "device": str(self.device), "precision": self.loaded.policy.name, "max_upload_bytes": MAX_UPLOAD_BYTES, "suffixes": list(IMAGE_SUFFIXES),
                "queue_limit": self.queue.limit, "batch_limit": self.queue.batch_limit,
                "gzmorph_version": __version__}

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        """The 37 answers of a batch of images; called by the queue with the model lock held."""
        return predict_answers(self.loaded, pixels, self.queue.batch_limit, self.tta).astype(np.float64)

    def predict(self, data: bytes, name: str) -> dict:
        """Everything the page shows for one uploaded file. Raises :class:`BadImage` (message without the name)."""
        if not data:
            raise BadImage("empty file (0 bytes)")
        with tempfile.TemporaryDirectory(prefix="gzmorph-serve-") as tmp:
            path = Path(tmp) / f"upload{_suffix(name)}"
            path.write_bytes(data)
            with self._decoding:
                pixels = decode(path, self.prep)
        started = time.perf_counter()
        values = self.queue.run(pixels)
        log.info("predicted %s in %.2f s (waiting for the model included)", name, time.perf_counter() - started)
        with self._decoding:
            preview = _preview(data, pixels)
        shares = tree.answer_shares(values)
        questions = [{"question": q.number, "text": q.text, "parent": q.parent,
                      "reached": float(values[q.slice].sum()),
                      "answers": [{"column": a.column, "text": a.text, "value": float(values[a.index]),
                                   "share": float(shares[a.index])} for a in q.answers]}
                     for q in tree.QUESTIONS]
        similar = self._similar(pixels) if self.neighbours else None
        return {"file": name, "id": galaxy_id(Path(name)), "model": self.loaded.config.model,
                **({"similar": similar, "index_size": len(self.neighbours[0])} if similar is not None else {}),
                "weights_sha256": self.loaded.sha256, "tta": self.tta, "columns": list(tree.COLUMNS),
                "values": [float(v) for v in values],
                "path": [step.as_dict() for step in tree.most_likely_path(values)],
                "questions": questions, "preview": preview,
                "input_preview": _png_data_url(_upscaled(pixels))}


    def _similar(self, pixels: np.ndarray) -> list[dict]:
        """The index's nearest galaxies to these pixels, with thumbnails of their images."""
        from .similar import Neighbours, top_answers
        from .tta import embed_array

        features, index, images, k = self.neighbours
        with self._lock:
            vector = embed_array(self.loaded.model, pixels[None], 1, self.loaded.policy)[0]
        sims, rows = index.search(vector, k)
        found = Neighbours("upload", None, rows[0][rows[0] >= 0], sims[0][rows[0] >= 0])
        out = []
        for r, sim in zip(found.rows, found.similarities):
            path = Path(features.files[r]) if images is None else Path(images) / Path(features.files[r]).name
            try:
                thumb = _png_data_url(_upscaled(decode(path, self.prep), 128))
            except BadImage:
                thumb = ""  # the neighbour's file has gone: listed without its picture
            answer = "; ".join(top_answers(features.answers[r], 1)) if features.answers is not None else ""
            out.append({"id": features.ids[r], "similarity": float(sim), "thumb": thumb, "answer": answer})
        return out


class Handler(BaseHTTPRequestHandler):
    server: "GzmorphServer"
    server_version = f"gzmorph/{__version__}"
    timeout = IDLE_SECONDS  # set on the socket by setup(): a client silent this long is dropped, with its thread

    def setup(self) -> None:
        super().setup()
        plain = self.rfile
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self.server.request_seconds, self.timeout))
        plain.close()
        self.body_unread = False  # an answer sent before the body was read: finish() drains it

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.body_unread:
                self._linger()

    def _linger(self) -> None:
        """Drop what the client is still sending, for a moment, before the connection closes. A socket closed with
        unread bytes makes the kernel send a reset, and a client still sending its body would then see 'connection
        reset by peer' instead of the 413 or 503 already sent to it."""
        deadline = time.monotonic() + LINGER_SECONDS
        dropped = 0
        try:
            self.connection.shutdown(socket.SHUT_WR)  # the answer is complete: the client sees its end
            while dropped <= MAX_UPLOAD_BYTES and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:  # gone, reset or silent: nothing more to wait for
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def _handle(self, routes: dict) -> None:
        path = urlsplit(self.path).path
        try:
            if path in routes:
                routes[path]()
            elif path in self.server.allowed:
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} does not accept {self.command}",
                            {"Allow": self.server.allowed[path]})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"{path}: no such page")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client went away or stalled
            log.debug("client %s disconnected", self.address_string())
        except Exception:  # noqa: BLE001 - a bug must cost one request, not the server
            log.error("%s %s failed", self.command, path, exc_info=True)
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error in gzmorph serve (see its log)")
            except OSError:
                pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle({"/": self._page, "/index.html": self._page, "/api/info": self._info})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_POST(self) -> None:  # noqa: N802
        self._handle({"/api/predict": self._predict})

    def _page(self) -> None:
        self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")

    def _info(self) -> None:
        self._json(HTTPStatus.OK, self.server.predictor.info())

    def _refuse_unread(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer before the body is read, then close: an unread body must not be taken for the next request."""
        self.close_connection = True
        self.body_unread = True
        self._error(status, message, {**(headers or {}), "Connection": "close"})

    def _predict(self) -> None:
        name = Path(unquote(self.headers.get("X-Filename", "") or "upload")).name or "upload"
        length = self.headers.get("Content-Length", "").strip()
        if not length.isdigit():
            self._refuse_unread(HTTPStatus.LENGTH_REQUIRED, f"{name}: send the image as the request body (or a "
                                                            f"multipart/form-data form), with a Content-Length header")
            return
        if int(length) > MAX_UPLOAD_BYTES:
            self._refuse_unread(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"{name}: {int(length) / 2**20:.1f} MB is more than the "
                                f"{MAX_UPLOAD_BYTES // 2**20} MB this page accepts")
            return
        queue = self.server.predictor.queue
        try:
            with queue.admit():
                body = self.rfile.read(int(length))
                if len(body) < int(length):
                    self._error(HTTPStatus.BAD_REQUEST, f"{name}: the upload ended after {len(body)} of the "
                                                        f"{int(length)} bytes its Content-Length announced")
                    return
                kind = self.headers.get("Content-Type", "")
                if kind.lower().startswith("multipart/form-data"):
                    body, filename = form_file(body, kind)
                    name = Path(filename).name if filename else name
                result = self.server.predictor.predict(body, name)
        except Busy as e:
            self._refuse_unread(HTTPStatus.SERVICE_UNAVAILABLE,
                                f"{name}: the server is busy ({queue.limit} uploads are being answered); try again "
                                f"in {e.retry_after} s", {"Retry-After": str(e.retry_after)})
            return
        except TimeoutError:
            self._refuse_unread(HTTPStatus.REQUEST_TIMEOUT, f"{name}: the upload did not arrive within "
                                                            f"{self.server.request_seconds:g} s")
            return
        except (BadImage, BadUpload) as e:
            self._error(HTTPStatus.BAD_REQUEST, f"{name}: {e}")
            return
        self._json(HTTPStatus.OK, result)


class GzmorphServer(ThreadingHTTPServer):
    """The HTTP server with its predictor and page; ``serve_forever()`` in any thread, ``shutdown()`` from another."""

    # Never share a port with another listener: a second server on the same port must fail, not split the traffic.
    allow_reuse_port = False
    request_queue_size = LISTEN_BACKLOG
    allowed = {"/": "GET, HEAD", "/index.html": "GET, HEAD", "/api/info": "GET, HEAD", "/api/predict": "POST"}

    def __init__(self, address: tuple[str, int], predictor: Predictor, page: bytes):
        self.predictor = predictor
        self.page = page
        self.request_seconds = REQUEST_SECONDS
        if ":" in address[0]:  # an IPv6 address such as :: or ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(run: str | Path, host: str = "127.0.0.1", port: int = 8000, which: str = "best",
                device: str = "auto", tta: int = 8, precision: str = "auto", index: str | Path | None = None,
                images: str | Path | None = None, queue_limit: int = QUEUE_LIMIT) -> GzmorphServer:
    """Load ``run``'s model and bind ``host:port`` (0 = a free port; the bound one is ``server.server_address[1]``).
    Nothing is served until ``serve_forever()``. ``queue_limit``: uploads admitted at once; the next gets 503."""
    if not 0 <= port <= 65535:
        raise BadArgument(f"--port must be between 0 and 65535, got {port}")
    page = _page()
    predictor = Predictor(run, which, device, tta, precision, index, images, queue_limit=queue_limit)
    try:
        return GzmorphServer((host, port), predictor, page)
    except socket.gaierror as e:
        raise GzmorphError(f"cannot listen on {host!r}: not an address of this machine ({e.strerror})") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise GzmorphError(f"port {port} is in use; pass --port N or --port 0") from None
        if e.errno == errno.EACCES:
            raise GzmorphError(f"port {port}: permission denied (ports below 1024 need root); pass --port N or "
                               f"--port 0") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise GzmorphError(f"cannot listen on {host}: not an address of this machine") from None
        raise GzmorphError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, which: str = "best", device: str = "auto",
          tta: int = 8, precision: str = "auto", index: str | Path | None = None,
          images: str | Path | None = None, queue_limit: int = QUEUE_LIMIT) -> None:
    """Serve the page for ``run`` (None or ``pretrained``: the model inside gzmorph) until Ctrl-C."""
    server = make_server(run, host, port, which, device, tta, precision, index, images, queue_limit)
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM, what service managers send) stops it as cleanly as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    what = server.predictor.name
    what = f"the packaged model {what}" if what == pretrained.NAME else what
    print(f"serving {what} ({server.predictor.loaded.config.model}) at {server.url}, answering "
          f"{server.predictor.queue.limit} uploads at a time — Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second `kill` while shutting down just ends it
        print("stopped", flush=True)
    finally:
        server.server_close()
