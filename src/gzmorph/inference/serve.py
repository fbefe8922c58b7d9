"""``gzmorph serve RUN``: a small local web page that answers the decision tree for one dropped galaxy image.

Standard library only (``http.server``): the page is one self-contained HTML file (``gzmorph/inference/web/index.html``, no
external fetches) and the API is two JSON endpoints:

    GET  /             the page
    GET  /api/info     the model being served (name, weights and their SHA-256, TTA, crop and size, version)
    POST /api/predict  body = the image file's bytes, header ``X-Filename`` = its name (URL-encoded; gives the
                       suffix) -> the 37 values, the most likely path, every question's answers, a preview PNG

The model is loaded once. Requests are handled in threads, but inference runs one at a time behind a lock: a
module is not safe to call from several threads at once, and one image at a time already uses every core.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
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

from .. import runs, tree
from ..data.images import IMAGE_SUFFIXES, decode, image_suffix
from ..errors import BadArgument, BadImage, GzmorphError
from ..precision import pick_device
from ..version import __version__
from .predict import galaxy_id
from .tta import check_tta, predict_answers

log = logging.getLogger("gzmorph")

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # far above any galaxy cutout; stops a stray upload from filling memory
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


class Predictor:
    """One loaded model and what the page needs from it."""

    def __init__(self, run: str | Path, which: str = "best", device: str = "auto", tta: int = 8,
                 precision: str = "auto", index: str | Path | None = None, images: str | Path | None = None,
                 k: int = 8):
        check_tta(tta)
        self.run = runs.run_folder(run)
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
        self._lock = threading.Lock()

    def info(self) -> dict:
        cfg = self.loaded.config
        return {"run": self.run.name or str(self.run), "model": cfg.model, "weights": self.loaded.weights.name,
                "sha256": self.loaded.sha256, "tta": self.tta, "crop": self.prep.crop, "size": self.prep.size,
                "device": str(self.device), "precision": self.loaded.policy.name, "max_upload_bytes": MAX_UPLOAD_BYTES, "suffixes": list(IMAGE_SUFFIXES),
                "gzmorph_version": __version__}

    def predict(self, data: bytes, name: str) -> dict:
        """Everything the page shows for one uploaded file. Raises :class:`BadImage` (message without the name)."""
        if not data:
            raise BadImage("empty file (0 bytes)")
        with tempfile.TemporaryDirectory(prefix="gzmorph-serve-") as tmp:
            path = Path(tmp) / f"upload{_suffix(name)}"
            path.write_bytes(data)
            pixels = decode(path, self.prep)
        started = time.perf_counter()
        with self._lock:
            values = predict_answers(self.loaded, pixels[None], 8, self.tta)[0].astype(np.float64)
        log.info("predicted %s in %.2f s", name, time.perf_counter() - started)
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
                "questions": questions, "preview": _preview(data, pixels),
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
    timeout = 120  # seconds a client may stall mid-request before its connection (and thread) is dropped

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

    def _predict(self) -> None:
        name = Path(unquote(self.headers.get("X-Filename", "") or "upload")).name or "upload"
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            # Answer before reading: an unread body must not be taken for the next request.
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, f"{name}: send the image as the request body, with a "
                                                    f"Content-Length header", {"Connection": "close"})
            return
        if int(length) > MAX_UPLOAD_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"{name}: {int(length) / 2**20:.1f} MB is more than the {MAX_UPLOAD_BYTES // 2**20} MB "
                        f"this page accepts", {"Connection": "close"})
            return
        data = self.rfile.read(int(length))
        try:
            result = self.server.predictor.predict(data, name)
        except BadImage as e:
            self._error(HTTPStatus.BAD_REQUEST, f"{name}: {e}")
            return
        self._json(HTTPStatus.OK, result)


class GzmorphServer(ThreadingHTTPServer):
    """The HTTP server with its predictor and page; ``serve_forever()`` in any thread, ``shutdown()`` from another."""

    # Never share a port with another listener: a second server on the same port must fail, not split the traffic.
    allow_reuse_port = False
    allowed = {"/": "GET, HEAD", "/index.html": "GET, HEAD", "/api/info": "GET, HEAD", "/api/predict": "POST"}

    def __init__(self, address: tuple[str, int], predictor: Predictor, page: bytes):
        self.predictor = predictor
        self.page = page
        if ":" in address[0]:  # an IPv6 address such as :: or ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(run: str | Path, host: str = "127.0.0.1", port: int = 8000, which: str = "best",
                device: str = "auto", tta: int = 8, precision: str = "auto", index: str | Path | None = None,
                images: str | Path | None = None) -> GzmorphServer:
    """Load ``run``'s model and bind ``host:port`` (0 = a free port; the bound one is ``server.server_address[1]``).
    Nothing is served until ``serve_forever()``."""
    if not 0 <= port <= 65535:
        raise BadArgument(f"--port must be between 0 and 65535, got {port}")
    page = _page()
    predictor = Predictor(run, which, device, tta, precision, index, images)
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
          images: str | Path | None = None) -> None:
    """Serve the page for ``run`` until Ctrl-C."""
    server = make_server(run, host, port, which, device, tta, precision, index, images)
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM, what service managers send) stops it as cleanly as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"serving {run} ({server.predictor.loaded.config.model}) at {server.url} — Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second `kill` while shutting down just ends it
        print("stopped", flush=True)
    finally:
        server.server_close()
