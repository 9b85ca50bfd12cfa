"""What connections that never finish a request cost the search service, and that ``--request-timeout-s`` releases
them (``vitrieval.serve.timeouts``).

    python benchmarks/serve_connections.py                       # 1000 idle + 100 half-sent heads, deadline 2 s
    python benchmarks/serve_connections.py --idle 3000 --timeouts 2,off

For each deadline (``off``: 10^6 s, the service as it was), ``vitrieval serve`` runs in a process of its own on a
small index (the tiny test model, generated images). Then, in order: ``--searches`` searches one after another
(client round trips: the baseline), ``--idle`` connections that send nothing and ``--idle / 10`` that send half a
request head are opened and held, the server's resident memory is read (``/proc/PID/status``) and searches are
timed again (the first one alone, then the median), the benchmark waits the deadline plus one second, counts the
held connections the server has closed (those with half a head were answered 408 first), and times searches once
more. The table gives each phase's median and first search as a ratio to the baseline of the same run and the
memory each held connection costs; a deadline must leave "after" at the baseline and every connection closed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
OFF_S = 1e6


def make_index(root: Path) -> Path:
    """The tiny test model (DeiT-Tiny layout, 32 px) and a Flat index of 40 generated PNGs."""
    from PIL import Image, ImageDraw

    from vitrieval.config import ModelConfig
    from vitrieval.index import Index
    from vitrieval.model import Encoder

    model = Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8)).save(
        root / "model")
    images = root / "images"
    images.mkdir()
    for i in range(40):
        img = Image.new("RGB", (96, 96), (20 * (i % 10), 250 - 6 * i, 40))
        ImageDraw.Draw(img).ellipse((10 + i % 7, 12, 80, 70 + i % 11), fill=(240, 30 * (i % 8), 200))
        img.save(images / f"{i:03d}.png")
    Index.build(model, images, root / "cat.idx", factory="Flat", num_workers=0, progress=False)
    return root / "cat.idx"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def search_ms(port: int, body: bytes, boundary: str) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/search?k=5", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"search answered {response.status}")
    return (time.perf_counter() - started) * 1000


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF after whatever it sent)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def run(index: Path, timeout_s: float, idle: int, searches: int, image: bytes) -> dict[str, float]:
    boundary = "bench-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    server = subprocess.Popen([sys.executable, "-m", "vitrieval", "serve", "--index", str(index), "--port",
                               str(port), "--request-timeout-s", str(timeout_s), "--threads", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held: list[socket.socket] = []
    try:
        for _ in range(600):
            try:
                search_ms(port, body, boundary)
                break
            except OSError:
                time.sleep(0.1)
        for _ in range(5):  # warm-up
            search_ms(port, body, boundary)
        base = [search_ms(port, body, boundary) for _ in range(searches)]
        rss_before = rss_mb(server.pid)
        for i in range(idle + idle // 10):
            sock = socket.create_connection(("127.0.0.1", port))
            if i >= idle:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
            held.append(sock)
        time.sleep(0.5)  # the server accepts them
        rss_held = rss_mb(server.pid)
        first_held = search_ms(port, body, boundary)
        during = [search_ms(port, body, boundary) for _ in range(searches)]
        time.sleep(min(timeout_s, 10.0) + 1.0)
        released = sum(closed(sock) for sock in held)
        first_after = search_ms(port, body, boundary)
        after = [search_ms(port, body, boundary) for _ in range(searches)]
        return {"base": statistics.median(base), "first_held": first_held, "held": statistics.median(during),
                "first_after": first_after, "after": statistics.median(after), "held_n": len(held),
                "released": released, "kb_per_conn": (rss_held - rss_before) * 1024 / max(len(held), 1),
                "rss_held_mb": rss_held, "rss_after_mb": rss_mb(server.pid)}
    finally:
        for sock in held:
            sock.close()
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=1000, help="connections that send nothing (default 1000)")
    parser.add_argument("--timeouts", default="2,off", help="deadlines in seconds, or off (default 2,off)")
    parser.add_argument("--searches", type=int, default=20, help="searches per phase (default 20)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(SRC))
    with tempfile.TemporaryDirectory() as tmp:
        index = make_index(Path(tmp))
        image = (Path(tmp) / "images" / "007.png").read_bytes()
        print(f"{'deadline':>9} {'base ms':>8} {'held: 1st':>10} {'median':>7} {'after: 1st':>11} {'median':>7} "
              f"{'released':>13} {'KB/conn':>8} {'RSS held/after MB':>18}")
        for spec in args.timeouts.split(","):
            timeout_s = OFF_S if spec.strip() == "off" else float(spec)
            r = run(index, timeout_s, args.idle, args.searches, image)
            b = r["base"]
            print(f"{spec.strip():>9} {b:8.1f} {r['first_held'] / b:9.2f}x {r['held'] / b:6.2f}x "
                  f"{r['first_after'] / b:10.2f}x {r['after'] / b:6.2f}x {r['released']:>6}/{r['held_n']:<6} "
                  f"{r['kb_per_conn']:8.1f} {r['rss_held_mb']:8.0f}/{r['rss_after_mb']:<8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
