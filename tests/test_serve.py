"""``gzmorph serve``: the JSON API over real HTTP (an untrained run, no browser, fast), then the page end to end in
headless Chromium driven by Selenium (a run trained for seconds on the real data, a real galaxy JPEG uploaded through
the page's file input, the answers read off the page).

The browser test skips where Chromium, chromedriver or selenium is missing, except when $CI or
$GZMORPH_REQUIRE_BROWSER is set: there their absence is a failure (CI installs Debian's chromium + chromium-driver).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import importlib.util
import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from gzmorph import runs, tree
from gzmorph.inference import serve as serve_module
from gzmorph.errors import GzmorphError
from gzmorph.data.images import decode
from gzmorph.inference.tta import predict_array
from gzmorph.inference.predict import galaxy_id
from gzmorph.inference.serve import MAX_UPLOAD_BYTES, make_server

from helpers import cli_fails, make_fake_run, random_image, write_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One image at a time gains nothing from a second thread, and on a shared, busy CPU OpenMP's waits for a
    descheduled second thread make each prediction take seconds instead of milliseconds. Restored afterwards (train()
    below also sets it, for the whole process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def running(run: Path, **options):
    """A server for ``run`` on a free port, serving in a thread; yields (server, base URL)."""
    server = make_server(run, host="127.0.0.1", port=0, device="cpu", **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def call(url: str, body: bytes | None = None, name: str | None = None, method: str | None = None
         ) -> tuple[int, dict | bytes, str]:
    """(status, JSON or raw bytes, content type) of one request; HTTP errors are answers too."""
    headers = {"X-Filename": quote(name)} if name is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, kind = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, (json.loads(raw) if kind.startswith("application/json") else raw), kind


def upload(base: str, path: Path) -> tuple[int, dict]:
    status, payload, _ = call(f"{base}/api/predict", path.read_bytes(), path.name)
    return status, payload


def post(port: int, body: bytes, headers: dict[str, str], timeout: float = 60) -> tuple[int, dict, dict]:
    """(status, headers, JSON) of one POST /api/predict over its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/api/predict", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "gzmorph-b0undary") -> tuple[bytes, str]:
    """A multipart/form-data body of (field name, file name or None, content) as browsers and curl -F send it,
    and its Content-Type."""
    out = b""
    for field, filename, content in fields:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: {'application/octet-stream' if filename else 'text/plain'}\r\n\r\n").encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def wait_until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not true after {seconds} s"
        time.sleep(0.01)


def expected_values(run: Path, path: Path, tta: int) -> np.ndarray:
    """What the API must answer: the run's model applied directly to the decoded file."""
    loaded = runs.load_model(run, "best", "cpu")
    pixels = decode(path, loaded.prep)
    return np.clip(predict_array(loaded.model, pixels[None], batch_size=8, policy=loaded.policy, tta=tta)[0], 0, 1)


def check_prediction(result: dict, run: Path, path: Path, tta: int) -> None:
    values = np.array(result["values"])
    assert result["file"] == path.name and result["id"] == galaxy_id(path)  # the GalaxyID `gzmorph predict` writes
    assert result["columns"] == list(tree.COLUMNS)
    assert values.shape == (37,) and values.min() >= 0 and values.max() <= 1
    assert not tree.tree_violations(values[None], tolerance=1e-4).any()
    np.testing.assert_allclose(values, expected_values(run, path, tta), atol=1e-6)
    assert result["path"][0]["question"] == 1 and result["path"][0]["answer"].startswith("Class1.")
    assert result["path"] == [s.as_dict() for s in tree.most_likely_path(values)]
    assert [q["question"] for q in result["questions"]] == list(range(1, 12))
    answers = [a for q in result["questions"] for a in q["answers"]]
    assert [a["column"] for a in answers] == list(tree.COLUMNS)
    assert [a["value"] for a in answers] == result["values"]
    for q in result["questions"]:
        assert sum(a["share"] for a in q["answers"]) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# The API, over an untrained gznet run
# ------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("serve") / "run", model="gznet")


@pytest.fixture(scope="module")
def served(fake_run):
    with running(fake_run, tta=8) as (server, base):
        yield server, base


def test_page_and_info(served, fake_run):
    server, base = served
    status, page, kind = call(f"{base}/")
    assert status == 200 and kind.startswith("text/html")
    assert b'id="file"' in page
    assert b"http://" not in page and b"https://" not in page  # self-contained: nothing fetched from elsewhere
    status, info, _ = call(f"{base}/api/info")
    assert status == 200
    assert info["model"] == "gznet" and info["weights"] == "best.safetensors" and info["tta"] == 8
    assert info["sha256"] == runs.file_sha256(fake_run / "best.safetensors")
    assert (info["crop"], info["size"]) == (192, 64)
    assert info["gzmorph_version"] and info["max_upload_bytes"] == MAX_UPLOAD_BYTES
    assert ".jpg" in info["suffixes"] and ".png" in info["suffixes"]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_predict_matches_the_model(served, fake_run, tmp_path, suffix):
    _, base = served
    path = write_image(tmp_path / f"587722{suffix}", seed=5)
    status, result = upload(base, path)
    assert status == 200, result
    check_prediction(result, fake_run, path, tta=8)
    assert result["model"] == "gznet" and result["tta"] == 8
    assert result["weights_sha256"] == runs.file_sha256(fake_run / "best.safetensors")
    # The preview is the whole 424 px upload shrunk to 256 px; the model input is 64 px shown 4x.
    for key, side in (("preview", 256), ("input_preview", 256)):
        prefix = "data:image/png;base64,"
        assert result[key].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(result[key][len(prefix):]))) as im:
            assert im.size == (side, side)


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz"])
def test_predict_a_fits_cutout(served, fake_run, tmp_path, suffix):
    fits = pytest.importorskip("astropy.io.fits")
    path = tmp_path / f"587722{suffix}"
    counts = random_image(424, seed=7).mean(axis=2).astype(np.float32) * 3.5 + 100  # raw counts, not 0..255
    fits.PrimaryHDU(counts).writeto(path)
    _, base = served
    status, result = upload(base, path)
    assert status == 200, result
    check_prediction(result, fake_run, path, tta=8)
    # Pillow cannot show raw counts: the preview is the model's input, enlarged.
    assert result["preview"] == result["input_preview"]


def test_filename_travels_url_encoded(served, tmp_path):
    _, base = served
    path = write_image(tmp_path / "galaxie n°1, été.jpg", seed=2)
    status, result = upload(base, path)
    assert status == 200 and result["file"] == path.name and result["id"] == "galaxie n°1, été"


@pytest.mark.parametrize("body, why", [(b"this is not an image", "not an image Pillow can read"),
                                       (b"", "empty file")])
def test_unreadable_upload_is_a_400_with_the_reason(served, body, why):
    _, base = served
    status, result, kind = call(f"{base}/api/predict", body, "broken.jpg", method="POST")
    assert status == 400 and kind == "application/json"
    assert result["error"].startswith("broken.jpg: ") and why in result["error"]


def test_a_decompression_bomb_is_a_400(served, tmp_path):
    """A 144-megapixel PNG of a few kilobytes: refused from its header, before its pixels are decoded."""
    _, base = served
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    status, result = upload(base, bomb)
    assert status == 400 and result["error"].startswith("bomb.png: image too large")


@pytest.mark.parametrize("how", ["raw", "form"])
def test_an_uploaded_name_never_reaches_a_path(served, tmp_path, how):
    """Only the name's last part is used, whether it came in X-Filename or in the form."""
    server, base = served
    data = write_image(tmp_path / "x.jpg", seed=9).read_bytes()
    sneaky = "../../../tmp/../587722.jpg"
    if how == "raw":
        status, result, _ = call(f"{base}/api/predict", data, sneaky, method="POST")
    else:
        body, kind = multipart([("file", sneaky, data)])
        status, _, result = post(server.server_address[1], body, {"Content-Type": kind})
    assert status == 200 and result["file"] == "587722.jpg" and result["id"] == "587722"


def test_truncated_jpeg_is_a_400(served, tmp_path):
    _, base = served
    data = write_image(tmp_path / "whole.jpg").read_bytes()
    status, result, _ = call(f"{base}/api/predict", data[: len(data) // 3], "cut.jpg", method="POST")
    assert status == 400 and result["error"].startswith("cut.jpg: ")


@pytest.mark.parametrize("declared", [MAX_UPLOAD_BYTES + 1, 10 * 2**30])
@pytest.mark.parametrize("sent", [0, 2 * 2**20])
def test_too_large_upload_is_refused_before_reading_it(served, declared, sent):
    """Refused from the header alone; a client already sending its body reads the 413, not a reset."""
    server, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("X-Filename", "huge.jpg")
    conn.putheader("Content-Length", str(declared))
    conn.endheaders()
    conn.send(b"\0" * sent)  # the start of a body the server does not want: closing on it unread resets
    response = conn.getresponse()
    assert response.status == 413
    assert response.getheader("Connection") == "close"
    assert json.loads(response.read())["error"].startswith(f"huge.jpg: {declared / 2**20:.1f} MB is more than")
    conn.close()


def test_unknown_paths_and_wrong_methods(served):
    _, base = served
    status, result, _ = call(f"{base}/nothing/here")
    assert status == 404 and "no such page" in result["error"]
    assert call(f"{base}/api/predict")[0] == 405
    assert call(f"{base}/", b"x", method="POST")[0] == 405


def test_a_failing_handler_answers_500_and_the_server_lives_on(served, tmp_path, monkeypatch, caplog):
    server, base = served

    def broken(data, name):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.predictor, "predict", broken)
    status, result, _ = call(f"{base}/api/predict", b"whatever", "x.jpg", method="POST")
    assert status == 500 and "internal error" in result["error"]
    assert any("failed" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    status, _ = upload(base, write_image(tmp_path / "after.jpg"))
    assert status == 200


def test_concurrent_uploads_each_get_their_own_answer(served, fake_run, tmp_path):
    _, base = served
    paths = [write_image(tmp_path / f"{i}.jpg", seed=10 + i) for i in range(4)]
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        results[i] = upload(base, paths[i])[1]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, path in enumerate(paths):
        np.testing.assert_allclose(results[i]["values"], expected_values(fake_run, path, 8), atol=1e-6)


def test_a_multipart_upload_gets_the_same_answer_as_a_raw_body(served, fake_run, tmp_path):
    server, base = served
    path = write_image(tmp_path / "587722.jpg", seed=21)
    raw_status, raw = upload(base, path)
    # A UTF-8 file name travels raw in the form, as browsers send it; a text field before the file is ignored.
    body, kind = multipart([("note", None, b"from a script"), ("file", "galaxie été.jpg", path.read_bytes())])
    req = urllib.request.Request(f"{base}/api/predict", data=body, headers={"Content-Type": kind})
    with urllib.request.urlopen(req, timeout=30) as r:
        status, form = r.status, json.loads(r.read())
    assert raw_status == status == 200
    assert form["values"] == raw["values"] and form["path"] == raw["path"]
    assert form["file"] == "galaxie été.jpg" and form["id"] == "galaxie été"
    check_prediction(raw, fake_run, path, tta=8)


@pytest.mark.parametrize("fields, boundary, why", [
    ([("note", None, b"no file here")], "b0undary", "send one image in the form field 'file' (this form has 'note')"),
    ([("a", "a.jpg", b"x"), ("b", "b.jpg", b"y")], "b0undary", "send one image in the form field 'file'"),
    ([("file", "x.jpg", b"\xff\xd8 not a JPEG")], "b0undary", "x.jpg: not an image Pillow can read"),
    (None, "b0undary", "incomplete"),
    (None, None, "needs its boundary="),
])
def test_a_bad_multipart_upload_is_a_400_with_the_reason(served, tmp_path, fields, boundary, why):
    server, _ = served
    if fields is None:  # a form cut off in the middle of its file
        body, kind = multipart([("file", "cut.jpg", write_image(tmp_path / "cut.jpg").read_bytes())], "b0undary")
        body = body[: len(body) // 2]
    else:
        body, kind = multipart(fields, "b0undary")
    if boundary is None:
        kind = "multipart/form-data"
    status, _, result = post(server.server_address[1], body, {"Content-Type": kind})
    assert status == 400 and why in result["error"], result


def test_64_concurrent_uploads_are_all_answered(served, fake_run, tmp_path):
    """64 clients connecting at the same instant: each gets 200 or 503 with Retry-After, none a reset (the standard
    library's listen backlog of 5 reset a third of them), and every 200 carries the answer of its own image (8
    different ones go up, so an answer handed to the wrong request would show)."""
    server, _ = served
    assert server.request_queue_size >= 64
    port = server.server_address[1]
    images = [write_image(tmp_path / f"58772{k}.jpg", seed=30 + k).read_bytes() for k in range(8)]
    alone = [post(port, data, {"X-Filename": "x.jpg"})[2]["values"] for data in images]  # one at a time first
    clients = 64
    start = threading.Barrier(clients)
    answers: list = [None] * clients

    def one(i: int) -> None:
        start.wait(timeout=30)
        try:
            answers[i] = post(port, images[i % 8], {"X-Filename": "587722.jpg"})
        except OSError as e:  # a reset, a refused connection or a timeout: what must not happen
            answers[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    failed = [a for a in answers if not isinstance(a, tuple)]
    assert not failed, failed
    statuses = [status for status, _, _ in answers]
    # The queue admits 32 at once, so at least that many are answered; the rest may be asked to come back.
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 16, statuses
    for i, (status, headers, payload) in enumerate(answers):
        if status == 503:
            assert int(headers["Retry-After"]) >= 1 and "the server is busy" in payload["error"]
        else:
            assert np.allclose(payload["values"], alone[i % 8], atol=1e-5), i


def test_an_upload_past_the_queue_limit_is_503_at_once(fake_run, tmp_path):
    """With the one admission slot held by an upload whose forward pass is stalled, the next gets 503 and
    Retry-After at once (its 1 MB body unread, yet no reset); the slot, once free, admits again."""
    image = write_image(tmp_path / "587722.jpg", seed=4)
    with running(fake_run, tta=1, queue_limit=1) as (server, base):
        queue = server.predictor.queue
        forward, release = queue.forward, threading.Event()

        def stalled(pixels):
            assert release.wait(30)
            return forward(pixels)

        queue.forward = stalled
        first: dict = {}
        holder = threading.Thread(target=lambda: first.update(answer=upload(base, image)))
        holder.start()
        wait_until(lambda: queue.admitted == 1 and queue.waiting() == 0)  # admitted and in the (stalled) model
        body = image.read_bytes() + b"\0" * 2**20
        status, headers, result = post(server.server_address[1], body, {"X-Filename": "second.jpg"}, timeout=5)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert result["error"].startswith("second.jpg: the server is busy (1 uploads are being answered)")
        release.set()
        holder.join(30)
        assert first["answer"][0] == 200
        assert upload(base, image)[0] == 200
        assert server.predictor.info()["queue_limit"] == 1


def test_waiting_uploads_run_as_one_batch(fake_run, tmp_path):
    """Uploads that arrive while the model is busy go through it together, each answered with its own row."""
    paths = [write_image(tmp_path / f"{i}.jpg", seed=30 + i) for i in range(5)]
    with running(fake_run, tta=2) as (server, base):
        queue = server.predictor.queue
        forward, batches = queue.forward, []
        queue.forward = lambda pixels: (batches.append(len(pixels)), forward(pixels))[1]
        results: dict = {}
        with queue.model_lock:  # the model is busy: every upload queues behind it
            threads = [threading.Thread(target=lambda i=i: results.update({i: upload(base, paths[i])}))
                       for i in range(len(paths))]
            for t in threads:
                t.start()
            wait_until(lambda: queue.waiting() == len(paths))
        for t in threads:
            t.join(30)
        assert batches == [len(paths)]
        for i, path in enumerate(paths):
            assert results[i][0] == 200
            np.testing.assert_allclose(results[i][1]["values"], expected_values(fake_run, path, 2), atol=1e-6)


def dribble(sock: socket.socket, payload: bytes, seconds: float) -> tuple[float, bytes]:
    """Send ``payload`` a byte every 0.1 s, over and over, until the server closes the connection or ``seconds``
    pass; returns (seconds it took, what the server answered)."""
    sock.settimeout(0.1)
    started, answer = time.monotonic(), b""
    for i in range(int(seconds / 0.1)):
        try:
            sock.sendall(payload[i % len(payload):][:1])
            chunk = sock.recv(65536)
        except TimeoutError:
            continue  # nothing from the server yet
        except OSError:  # closed
            break
        if not chunk:
            break
        answer += chunk
    return time.monotonic() - started, answer


def test_a_slow_client_is_cut_off_without_blocking_others(fake_run, tmp_path):
    """Slowloris: a client sending its headers a byte at a time, never silent for long, is dropped once its request
    is overdue; one dribbling its body gets 408; an ordinary upload meanwhile is answered at once."""
    image = write_image(tmp_path / "587722.jpg", seed=6)
    with running(fake_run, tta=1) as (server, base):
        server.request_seconds = 1.5
        port = server.server_address[1]
        body_head = b"POST /api/predict HTTP/1.1\r\nX-Filename: slow.jpg\r\nContent-Length: 99999\r\n\r\n"
        slow = {"headers": (b"POST /api/predict HTTP/1.1\r\n" + b"X-Pad: a\r\n" * 100, b""), "body": (b"x", body_head)}
        outcome: dict[str, tuple[float, bytes]] = {}

        def client(kind: str) -> None:
            payload, first = slow[kind]
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(first)
                outcome[kind] = dribble(sock, payload, seconds=8)

        threads = [threading.Thread(target=client, args=(kind,)) for kind in slow]
        for t in threads:
            t.start()
        time.sleep(0.3)  # both slow clients connected and dribbling
        status, _ = upload(base, image)
        assert status == 200 and not outcome  # answered while both were still connected
        for t in threads:
            t.join(15)
        assert all(seconds < 5 for seconds, _ in outcome.values()), outcome  # 1.5 s deadline, not 8 s of dribble
        assert outcome["headers"][1] == b""  # no request line and headers in time: dropped without an answer
        assert outcome["body"][1].startswith(b"HTTP/1.0 408 "), outcome["body"]
        assert b"slow.jpg: the upload did not arrive within 1.5 s" in outcome["body"][1]


def test_port_in_use_is_one_line(fake_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GzmorphError, match=f"port {port} is in use; pass --port N or --port 0"):
            make_server(fake_run, port=port, device="cpu")
        cli_fails(capsys, ["serve", fake_run, "--port", port, "--device", "cpu"], f"port {port} is in use")


def test_bad_run_folder_is_one_line(tmp_path, capsys):
    cli_fails(capsys, ["serve", tmp_path / "nowhere", "--port", 0], "not a gzmorph run folder")


def test_serve_prints_the_url_and_stops_on_ctrl_c(fake_run, monkeypatch, capsys):
    def interrupted(self, poll_interval=0.5):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_module.GzmorphServer, "serve_forever", interrupted)
    serve_module.serve(fake_run, port=0, device="cpu", tta=2)
    out = capsys.readouterr().out
    assert f"serving {fake_run} (gznet) at http://127.0.0.1:" in out and "Ctrl-C to stop" in out


def test_serve_on_the_packaged_model_names_it(monkeypatch, capsys):
    """`gzmorph serve` with no run serves the model inside gzmorph and says so (it printed 'serving None')."""
    from gzmorph import pretrained

    def interrupted(self, poll_interval=0.5):
        assert self.predictor.info()["run"] == pretrained.NAME
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_module.GzmorphServer, "serve_forever", interrupted)
    serve_module.serve(None, port=0, device="cpu", tta=1)
    out = capsys.readouterr().out
    assert f"serving the packaged model {pretrained.NAME} (gznet) at http://127.0.0.1:" in out
    assert "None" not in out


def test_the_queue_limit_is_set_from_the_command_line(fake_run, monkeypatch, capsys):
    from gzmorph.cli import main

    seen = []

    def interrupted(self, poll_interval=0.5):
        seen.append(self.predictor.info()["queue_limit"])
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_module.GzmorphServer, "serve_forever", interrupted)
    assert main(["serve", str(fake_run), "--port", "0", "--device", "cpu", "--tta", "1", "--queue-limit", "3"]) == 0
    assert main(["serve", str(fake_run), "--port", "0", "--device", "cpu", "--tta", "1"]) == 0
    assert seen == [3, serve_module.QUEUE_LIMIT]
    assert main(["serve", str(fake_run), "--port", "0", "--queue-limit", "0"]) == 2
    assert "--queue-limit must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# The page, end to end in headless Chromium
# ------------------------------------------------------------------------------------------------------------------

def _browser_or_skip() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if missing:
        why = (f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; "
               f"pip install selenium)")
        if os.environ.get("CI") or os.environ.get("GZMORPH_REQUIRE_BROWSER"):
            pytest.fail(f"{why}; required here because $CI or $GZMORPH_REQUIRE_BROWSER is set")
        pytest.skip(why)


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver or browser
    options = Options()
    options.binary_location = str(CHROMIUM)
    # The background-networking flags matter: on a closed network Chromium's own calls home are refused, slowly.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1100,1400", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def trained_run(real_data, tmp_path_factory) -> Path:
    """gznet trained for one short epoch on 300 real galaxies: a few seconds, but real weights."""
    import gzmorph

    return gzmorph.train(gzmorph.TrainConfig(
        data=str(real_data), out=str(tmp_path_factory.mktemp("serve-trained") / "run"), model="gznet",
        epochs=1, limit=300, use_partial=False, threads=1, workers=1), progress=False)


def _wait_for_status(driver, *wanted: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, "status").text in wanted)
    return driver.find_element(By.ID, "status").text


@pytest.mark.slow
@pytest.mark.realdata
def test_page_end_to_end_in_headless_chromium(chromium, trained_run, real_data, tmp_path):
    from selenium.webdriver.common.by import By

    driver = chromium
    image = sorted((real_data / "images_training_rev1").glob("*.jpg"))[0]
    with running(trained_run, tta=8) as (server, base):
        status, expected = upload(base, image)
        assert status == 200, expected
        check_prediction(expected, trained_run, image, tta=8)

        driver.get(f"{base}/")
        driver.find_element(By.ID, "file").send_keys(str(image.resolve()))  # chromedriver refuses paths with ".."
        status = _wait_for_status(driver, "done", "error")
        assert status == "done", driver.find_element(By.ID, "error").text

        # The walk through the tree, step by step, as the page shows it.
        steps = driver.find_elements(By.CSS_SELECTOR, "#path .step")
        assert len(steps) == len(expected["path"]) >= 2
        for shown, step in zip(steps, expected["path"]):
            assert shown.get_attribute("data-question") == f"Q{step['question']}"
            assert shown.get_attribute("data-answer") == step["answer"]
            assert shown.find_element(By.CLASS_NAME, "question").text == step["question_text"]
            assert shown.find_element(By.CLASS_NAME, "answer").text == step["answer_text"]
            share = shown.find_element(By.CLASS_NAME, "share").text
            assert share.endswith("%") and abs(float(share[:-1]) - 100 * step["share"]) <= 0.05 + 1e-9, share
        assert steps[0].get_attribute("data-question") == "Q1"

        # Every answer in the full table, the path's answers highlighted.
        rows = driver.find_elements(By.CSS_SELECTOR, "#all-answers tbody tr[data-answer]")
        assert [r.get_attribute("data-answer") for r in rows] == list(tree.COLUMNS)
        highlighted = {r.get_attribute("data-answer") for r in
                       driver.find_elements(By.CSS_SELECTOR, "#all-answers tr.on-path")}
        assert highlighted == {s["answer"] for s in expected["path"]}

        width = driver.execute_script("const i = document.getElementById('preview'); "
                                      "return i.complete ? i.naturalWidth : 0;")
        assert width == 256  # the whole 424 px JPEG, shrunk for display

        link = driver.find_element(By.ID, "download")
        assert link.text == "Download the 37 numbers (CSV)" and link.get_attribute("download") == f"{image.stem}.csv"
        csv_text = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(document.getElementById('download').href).then(r => r.text()).then(done, e => done('ERROR ' + e));")
        lines = csv_text.strip().split("\n")
        assert len(lines) == 2 and all(len(line.split(",")) == 38 for line in lines), csv_text
        assert lines[0].split(",") == ["GalaxyID", *tree.COLUMNS] and lines[1].split(",")[0] == image.stem
        np.testing.assert_allclose([float(v) for v in lines[1].split(",")[1:]], expected["values"], atol=6e-7)

        # No script errors on the way (a failing request or an exception would be logged as SEVERE).
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe

        # The whole page in one picture: the window grows to the page's height (plus the window's own frame).
        height = driver.execute_script("return document.documentElement.scrollHeight + window.outerHeight "
                                       "- window.innerHeight")
        driver.set_window_size(1100, min(height, 5000))
        shot = tmp_path / "serve.png"
        assert driver.save_screenshot(str(shot))
        shutil.copyfile(shot, "/tmp/serve-screenshot.png")

        # A corrupt file: the page shows the server's one-line reason and no results.
        corrupt = tmp_path / "corrupt.jpg"
        corrupt.write_bytes(b"\xff\xd8 definitely not a JPEG")
        status, refused = upload(base, corrupt)
        assert status == 400
        driver.find_element(By.ID, "file").send_keys(str(corrupt.resolve()))
        assert _wait_for_status(driver, "done", "error") == "error"
        assert driver.find_element(By.ID, "error").text == refused["error"]
        assert refused["error"].startswith("corrupt.jpg: ")
        assert not driver.find_element(By.ID, "results").is_displayed()


def test_the_page_waits_out_a_busy_server_in_headless_chromium(chromium, fake_run, tmp_path):
    """A 503 with Retry-After: the page says the server is busy, waits as asked and tries again, then shows the
    answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium
    image = write_image(tmp_path / "587722.jpg", seed=8)
    with running(fake_run, tta=1, queue_limit=1) as (server, base), contextlib.ExitStack() as held:
        driver.get(f"{base}/")
        held.enter_context(server.predictor.queue.admit())  # the one slot taken: the page's upload gets 503
        driver.find_element(By.ID, "file").send_keys(str(image.resolve()))
        WebDriverWait(driver, 30).until(lambda d: "the server is busy" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "status").text.startswith(f"the server is busy: trying {image.name} again")
        held.close()  # the slot is free again: the next try is answered
        assert _wait_for_status(driver, "done", "error") == "done", driver.find_element(By.ID, "error").text
        assert driver.find_element(By.ID, "results").is_displayed()


@pytest.mark.slow
@pytest.mark.realdata
def test_the_page_shows_galaxies_like_the_dropped_one_in_headless_chromium(chromium, trained_run, real_data,
                                                                           tmp_path):
    """`serve --index`: thumbnails of the index's nearest galaxies under the answers, in the order of the API."""
    pytest.importorskip("faiss")
    from selenium.webdriver.common.by import By

    from gzmorph.inference.embed import embed

    images = sorted((real_data / "images_training_rev1").glob("*.jpg"))[:60]
    listing = tmp_path / "index.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    embed(trained_run, listing, tmp_path / "features", workers=1, progress=False)
    driver = chromium
    with running(trained_run, tta=1, index=tmp_path / "features.npy") as (server, base):
        status, expected = upload(base, images[0])
        assert status == 200 and len(expected["similar"]) == 8
        assert expected["similar"][0]["id"] == images[0].stem  # the galaxy itself is in the index
        driver.get(f"{base}/")
        driver.find_element(By.ID, "file").send_keys(str(images[0].resolve()))
        assert _wait_for_status(driver, "done", "error") == "done", driver.find_element(By.ID, "error").text
        shown = driver.find_elements(By.CSS_SELECTOR, "#similar li")
        assert [li.find_element(By.CLASS_NAME, "neighbour-id").text for li in shown] == \
            [s["id"] for s in expected["similar"]]
        loaded = driver.execute_script("return [...document.querySelectorAll('#similar img')]"
                                       ".map(i => i.complete ? i.naturalWidth : 0);")
        assert loaded == [128] * 8
        assert "of 60 galaxies" in driver.find_element(By.ID, "similar-caption").text
        driver.set_window_size(1100, 2600)
        driver.save_screenshot("/tmp/serve-similar-screenshot.png")
