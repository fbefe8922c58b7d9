"""How `gzmorph serve` holds up under simultaneous uploads: requests/s and latency at 1, 16 and 64 clients.

    python benchmarks/serve_load.py                  # the model inside gzmorph, 8 views, a real galaxy JPEG
    python benchmarks/serve_load.py --run RUN --tta 1

Starts `gzmorph serve` as its own process (as users run it; the clients' threads must not share its interpreter)
on 127.0.0.1 with a free port, and only ever talks to that address. At each level, that many client threads (one
connection per request, http.client) upload the same galaxy JPEG a bounded number of times each, all starting
together; a client answered 503 waits the Retry-After it was given, as a browser's page does, and its next upload
counts as a new request. Reported per level: requests answered 200 per second of wall time, the median and 99th
percentile latency of those answers (seconds from connecting to the last byte), and how many were answered 200,
503 (the queue is full) or not at all (a reset, a refused connection, a timeout: there should be none). Writes
benchmarks/results/serve_load-<machine>.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from machine import describe_machine, machine_tag  # noqa: E402

HOST = "127.0.0.1"  # never anywhere else: this is a load test
LEVELS = ((1, 30), (16, 8), (64, 4))  # (clients, uploads each): bounded, about a minute in all on 2 cores
TIMEOUT = 60.0  # seconds one upload may take before it counts as unanswered


def start_server(run: str, tta: int) -> tuple[subprocess.Popen, int]:
    """`gzmorph serve` in its own process on a free port; returns it and the port it printed."""
    command = [sys.executable, "-m", "gzmorph", "serve", run, "--host", HOST, "--port", "0", "--device", "cpu",
               "--tta", str(tta)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(iter(server.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120  # loading the model, unpacking the packaged one the first time
    while time.monotonic() < deadline and server.poll() is None:
        found = re.search(rf"http://{re.escape(HOST)}:(\d+)/", "".join(printed))
        if found:
            return server, int(found.group(1))
        time.sleep(0.1)
    server.kill()
    sys.exit(f"gzmorph serve did not start: {''.join(printed).strip() or 'no output'}")


def upload(port: int, data: bytes, name: str) -> tuple[int | str, float, int]:
    """(status or the error's name, seconds, Retry-After or 0) of one upload on its own connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/api/predict", body=data, headers={"X-Filename": name})
        response = conn.getresponse()
        response.read()
        retry = response.getheader("Retry-After") or "0"
        return response.status, time.perf_counter() - started, int(retry) if retry.isdigit() else 0
    except OSError as e:  # ConnectionResetError, ConnectionRefusedError, TimeoutError, ...
        return type(e).__name__, time.perf_counter() - started, 0
    finally:
        conn.close()


def load(port: int, data: bytes, name: str, clients: int, each: int) -> dict:
    answers: list[tuple[int | str, float, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client() -> None:
        start.wait()
        for _ in range(each):
            answer = upload(port, data, name)
            with lock:
                answers.append(answer)
            if answer[0] == 503:
                time.sleep(answer[2])  # as asked: Retry-After seconds

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = np.array([seconds for status, seconds, _ in answers if status == 200])
    errors: dict[str, int] = {}
    for status, _, _ in answers:
        if status not in (200, 503):
            errors[str(status)] = errors.get(str(status), 0) + 1
    return {"clients": clients, "requests": len(answers), "wall_s": wall,
            "ok_per_s": len(ok) / wall, "p50_s": float(np.percentile(ok, 50)) if len(ok) else None,
            "p99_s": float(np.percentile(ok, 99)) if len(ok) else None, "n_200": len(ok),
            "n_503": sum(status == 503 for status, _, _ in answers), "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--run", default="pretrained", help="default: the model inside gzmorph")
    p.add_argument("--tta", type=int, default=8)
    args = p.parse_args()
    images = sorted((Path(args.data) / "images_training_rev1").glob("*.jpg"))
    if not images:
        sys.exit(f"no galaxy JPEGs in {args.data}/images_training_rev1; pass --data")
    image = images[0]
    data = image.read_bytes()
    server, port = start_server(args.run, args.tta)
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        conn.close()
        for _ in range(3):  # warm up: first passes allocate and pick kernels
            upload(port, data, image.name)
        levels = [load(port, data, image.name, clients, each) for clients, each in LEVELS]
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: it stops cleanly
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"gzmorph serve, {info['run']} ({info['model']}), {info['tta']} views, queue limit {info['queue_limit']}, "
          f"one {len(data) / 1024:.0f} KB JPEG ({image.name})")
    print(f"{'clients':>7} {'requests':>8} {'200/s':>7} {'p50 s':>7} {'p99 s':>7} {'200':>5} {'503':>5} {'errors':>6}")
    for r in levels:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['ok_per_s']:>7.1f} {r['p50_s'] or float('nan'):>7.3f} "
              f"{r['p99_s'] or float('nan'):>7.3f} {r['n_200']:>5} {r['n_503']:>5} {sum(r['errors'].values()):>6}")
    machine = describe_machine()
    out = HERE / "results" / f"serve_load-{machine_tag(machine)}.json"
    out.write_text(json.dumps({"benchmark": "serve_load", "machine": machine, "run": info["run"],
                               "model": info["model"], "weights_sha256": info["sha256"], "tta": info["tta"],
                               "queue_limit": info["queue_limit"], "batch_limit": info["batch_limit"],
                               "image": image.name, "image_bytes": len(data), "levels": levels,
                               "command": "python " + " ".join(sys.argv)}, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
