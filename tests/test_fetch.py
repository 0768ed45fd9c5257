"""The fetch policy against SSRF, traversal and leaks, on loopback servers the tests start.

Each case goes through ``lakehouse.ingest.resolve_row`` (what Spark workers run for every
manifest record) and must end as one quarantine reason, with no connection reaching a
listener that is not on the allow-list.
"""
from __future__ import annotations

import http.server
import io
import socketserver
import threading

import pytest
from PIL import Image

from lakehouse.fetch import FetchPolicy, redact
from lakehouse.ingest import resolve_row


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


class _Counting(socketserver.ThreadingTCPServer):
    """A listener that only counts the connections it receives."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self):
        self.connections = 0

        class H(socketserver.BaseRequestHandler):
            def handle(inner):
                self.connections += 1

        super().__init__(("127.0.0.1", 0), H)


class _Web(http.server.ThreadingHTTPServer):
    """Serves /img.png, /noai.png (X-Robots-Tag: noai), /big.png, and /go?to=URL (a 302)."""

    daemon_threads = True

    def __init__(self):
        self.connections = 0
        png = _png()

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(inner, *a):
                pass

            def do_GET(inner):
                self.connections += 1
                if inner.path.startswith("/go?to="):
                    inner.send_response(302)
                    inner.send_header("Location", inner.path.split("=", 1)[1])
                    inner.end_headers()
                    return
                body = png if inner.path != "/big.png" else png + b"\0" * 5000
                inner.send_response(200 if inner.path in ("/img.png", "/noai.png", "/big.png", "/img.png?sig=s3cr3t")
                                    else 404)
                if inner.path == "/noai.png":
                    inner.send_header("X-Robots-Tag", "noai, noimageai")
                inner.send_header("Content-Length", str(len(body)))
                inner.end_headers()
                inner.wfile.write(body)

        super().__init__(("127.0.0.1", 0), H)


@pytest.fixture
def servers():
    web, trap = _Web(), _Counting()
    for s in (web, trap):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield web, trap
    for s in (web, trap):
        s.shutdown()
        s.server_close()


def _row(uri, root=None):
    return {"source_kind": "cc", "source_name": "web", "original_id": "r1", "uri": uri, "content": None,
            "labels": [], "error_reason": None, "error_detail": None, "root": root}


def _resolve(uri, policy, root=None):
    out = resolve_row(_row(uri, root), 10_000_000, policy)
    return out["reason"], out["detail"] or "", out["uri"]


def test_ssrf_to_unlisted_addresses_is_refused_without_a_connection(servers):
    web, trap = servers
    open_web = FetchPolicy(remote=True, retries=0)
    cases = [f"http://127.0.0.1:{trap.server_address[1]}/x.jpg",      # loopback
             f"http://localhost:{trap.server_address[1]}/x.jpg",      # a name for loopback
             "http://169.254.169.254/latest/meta-data/",              # a metadata endpoint (link-local)
             "http://10.0.0.1/x.jpg", "http://[::1]/x.jpg",           # private, IPv6 loopback
             f"ftp://127.0.0.1:{trap.server_address[1]}/x.jpg",       # not http(s)
             f"gopher://127.0.0.1:{trap.server_address[1]}/_x"]
    for uri in cases:
        reason, detail, _ = _resolve(uri, open_web)
        assert reason == "forbidden", (uri, reason, detail)
    # a redirect from an allowed server to an unlisted one is checked again, and refused
    allow_web = FetchPolicy(remote=True, retries=0, allow=(f"127.0.0.1:{web.server_address[1]}",))
    hop = f"http://127.0.0.1:{web.server_address[1]}/go?to=http://127.0.0.1:{trap.server_address[1]}/x.jpg"
    reason, detail, _ = _resolve(hop, allow_web)
    assert reason == "forbidden" and "not globally routable" in detail, detail
    assert trap.connections == 0
    # remote fetching is off unless set
    reason, detail, _ = _resolve(f"http://127.0.0.1:{web.server_address[1]}/img.png", FetchPolicy())
    assert reason == "forbidden" and "FLD_FETCH_REMOTE" in detail


def test_allowed_mirror_is_fetched_and_limits_hold(servers):
    web, _ = servers
    base = f"http://127.0.0.1:{web.server_address[1]}"
    policy = FetchPolicy(remote=True, retries=0, allow=("127.0.0.0/8",), max_bytes=1000)
    assert _resolve(f"{base}/img.png", policy)[0] is None
    assert _resolve(f"{base}/go?to={base}/img.png", policy)[0] is None      # an allowed hop is followed
    assert _resolve(f"{base}/noai.png", policy)[0] == "opted_out"
    assert _resolve(f"{base}/big.png", policy)[0] == "too_large"
    assert _resolve(f"{base}/nope.png", policy)[0] == "fetch_failed"


def test_credentials_and_signed_queries_never_reach_a_table(servers):
    web, _ = servers
    port = web.server_address[1]
    policy = FetchPolicy(remote=True, retries=0, allow=("127.0.0.1",))
    reason, detail, uri = _resolve(f"http://user:hunter2@127.0.0.1:{port}/nope.png?X-Amz-Signature=s3cr3t#frag", policy)
    assert reason == "fetch_failed"
    for text in (detail, uri):
        assert "hunter2" not in text and "s3cr3t" not in text and "user" not in text, text
    assert uri == f"http://127.0.0.1:{port}/nope.png"
    assert redact("https://a:b@host.example/p/q.jpg?sig=1") == "https://host.example/p/q.jpg"


def test_local_references_stay_inside_their_dataset_folder(tmp_path):
    ds = tmp_path / "landing" / "coco" / "mine"
    (ds / "images").mkdir(parents=True)
    (ds / "images" / "ok.png").write_bytes(_png())
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png())
    (ds / "images" / "link.png").symlink_to(secret)
    policy = FetchPolicy()
    assert _resolve(str(ds / "images" / "ok.png"), policy, str(ds))[0] is None
    for ref in (str(secret), f"file://{secret}", str(ds / "images" / ".." / ".." / ".." / ".." / "secret.png"),
                str(ds / "images" / "link.png"), "/etc/passwd", str(tmp_path / "nope.png")):
        reason, detail, _ = _resolve(ref, policy, str(ds))
        # refused alike whether or not the file exists: no facts about files outside leak
        assert (reason, detail) == ("forbidden", "reference outside its dataset folder"), (ref, reason, detail)
    reason, detail, _ = _resolve(str(ds / "images" / "gone.png"), policy, str(ds))
    assert reason == "missing_file" and str(tmp_path) not in detail
    small = FetchPolicy(max_bytes=10)
    assert _resolve(str(ds / "images" / "ok.png"), small, str(ds))[0] == "too_large"


def test_poison_file_names_become_quarantine_rows(tmp_path):
    """Names that make the OS raise (NUL byte, 300 characters) are one counted row each, not a crash."""
    ds = tmp_path / "ds"
    ds.mkdir()
    for ref in (str(ds / "a\0b.jpg"), str(ds / ("x" * 300 + ".jpg")), str(ds / "images" / "\udcff.jpg")):
        reason, detail, _ = _resolve(ref, FetchPolicy(), str(ds))
        assert reason in ("malformed_record", "missing_file") and detail, (ref[:40], reason, detail)
