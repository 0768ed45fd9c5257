"""Reading what a manifest names, when the manifest is untrusted.

Manifests come from the open web (LAION / Conceptual Captions style) and from landing
folders many people can write to, and ingest runs with the cluster's credentials.  So:

- local references must resolve (symlinks included) inside their dataset folder;
- only ``http``/``https`` go to the network, and only when ``FetchPolicy.remote`` is on;
- every address a host resolves to must be globally routable (no loopback, private,
  link-local or metadata addresses) unless it is on the explicit allow-list; the
  connection goes to the address that was checked, and every redirect hop is checked again;
- reads are capped in bytes, each fetch has a wall-clock deadline, transient failures
  are retried with backoff, requests carry an identifying user agent, and images whose
  response says ``X-Robots-Tag: noai`` / ``noimageai`` are skipped (img2dataset's default);
- what lands in tables and messages is redacted: no credentials, query strings or
  fragments of URLs (``redact``).

Every refusal is an ``ImageRejected`` with a quarantine reason, so each record ends up
counted in ``quarantine``.
"""
from __future__ import annotations

import functools
import http.client
import ipaddress
import os
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from lakehouse.images import ImageRejected

USER_AGENT = "fld-ingest/0.1 (Florence-2 data engine; respects X-Robots-Tag noai)"
_REDIRECTS = (301, 302, 303, 307, 308)
_TRANSIENT = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class FetchPolicy:
    remote: bool = False                  # http(s) fetching is a deliberate setting (FLD_FETCH_REMOTE=1)
    allow: tuple[str, ...] = ()           # networks ("10.0.0.0/8") or hosts ("mirror.lan", "127.0.0.1:8080")
                                          # allowed although not globally routable: tests, private mirrors
    max_bytes: int = 64 << 20
    timeout_s: float = 10.0               # one connection attempt
    deadline_s: float = 30.0              # the whole fetch: retries and redirects included
    retries: int = 2
    max_redirects: int = 5
    threads: int = 8                      # concurrent fetches per partition

    @classmethod
    def from_settings(cls, s) -> "FetchPolicy":
        allow = tuple(a.strip() for a in (s.fetch_allow or "").split(",") if a.strip())
        return cls(remote=s.fetch_remote, allow=allow, max_bytes=s.fetch_max_bytes, timeout_s=s.fetch_timeout_s,
                   deadline_s=s.fetch_deadline_s, threads=s.fetch_threads)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file:")


def redact(uri: str | None) -> str | None:
    """A URL without user info, query string or fragment (signed URLs carry secrets there)."""
    if not uri or not is_remote(uri):
        return uri
    try:
        p = urlsplit(uri)
        host = p.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if p.port:
            netloc += f":{p.port}"
        return urlunsplit((p.scheme, netloc, p.path, "", ""))
    except ValueError:
        return uri.split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]


_realpath_of_root = functools.lru_cache(maxsize=256)(os.path.realpath)  # one dataset folder, many rows


def read_local(path: str, root: str | None, max_bytes: int) -> bytes:
    """A local file named by a manifest, which must lie inside ``root`` (its dataset folder)."""
    if root is not None:
        real, base = os.path.realpath(path), _realpath_of_root(root)
        if os.path.commonpath([real, base]) != base:
            # say nothing about the file itself: whether it exists is information too
            raise ImageRejected("forbidden", "reference outside its dataset folder")
        shown = os.path.relpath(real, base)
    else:
        shown = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ImageRejected("too_large", f"{shown}: larger than {max_bytes} bytes")
            # read what fstat promised (+1 to see growth): read(max_bytes + 1) allocates 64 MB per call,
            # which nearly doubled a ~100 KB read (bench/local_read.py)
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(max_bytes + 1 - len(data))
            return data
    except FileNotFoundError:
        raise ImageRejected("missing_file", f"no such file in the dataset folder: {shown}") from None
    except (IsADirectoryError, PermissionError, OSError) as e:
        raise ImageRejected("malformed_record", f"{shown}: {type(e).__name__}") from None


def _allowed(ip: ipaddress._BaseAddress, host: str, port: int, allow: tuple[str, ...]) -> bool:
    if ip.is_global and not ip.is_multicast:
        return True
    for a in allow:
        if a in (host, f"{host}:{port}", str(ip), f"{ip}:{port}"):
            return True
        try:
            if ip in ipaddress.ip_network(a, strict=False):
                return True
        except ValueError:
            continue
    return False


def _address(host: str, port: int, policy: FetchPolicy) -> str:
    """The one address to connect to; every address the name resolves to must be allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ImageRejected("fetch_failed", f"{host}: name does not resolve ({e.strerror})") from None
    ips = [ipaddress.ip_address(i[4][0].split("%", 1)[0]) for i in infos]
    bad = [ip for ip in ips if not _allowed(ip, host, port, policy.allow)]
    if bad or not ips:
        raise ImageRejected("forbidden", f"{host} resolves to an address that is not globally routable "
                                         f"({bad[0] if bad else 'none'}); add it to FLD_FETCH_ALLOW to permit it")
    return str(ips[0])


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an already checked address, verifying the certificate for the host name."""

    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _attempt(url: str, policy: FetchPolicy, deadline: float):
    """One request to one checked address: (status, headers, body or None, location)."""
    p = urlsplit(url)
    if p.scheme not in ("http", "https"):
        raise ImageRejected("forbidden", f"scheme {p.scheme or '(none)'} is not fetched (http and https only)")
    if not p.hostname:
        raise ImageRejected("malformed_record", "URL without a host")
    port = p.port or (443 if p.scheme == "https" else 80)
    address = _address(p.hostname, port, policy)
    timeout = max(0.1, min(policy.timeout_s, deadline - time.monotonic()))
    conn = (_PinnedHTTPS(address, p.hostname, port, timeout) if p.scheme == "https"
            else http.client.HTTPConnection(address, port, timeout=timeout))
    try:
        path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        conn.request("GET", path, headers={"Host": p.netloc.rsplit("@", 1)[-1], "User-Agent": USER_AGENT,
                                           "Accept": "image/*"})
        r = conn.getresponse()
        if r.status in _REDIRECTS or r.status >= 400:
            return r.status, r.headers, None, r.headers.get("Location")
        robots = (r.headers.get("X-Robots-Tag") or "").lower()
        if "noai" in robots or "noimageai" in robots:
            raise ImageRejected("opted_out", f"X-Robots-Tag: {robots[:100]}")
        length = r.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > policy.max_bytes:
            raise ImageRejected("too_large", f"Content-Length {length} > {policy.max_bytes} bytes")
        body = r.read(policy.max_bytes + 1)
        if len(body) > policy.max_bytes:
            raise ImageRejected("too_large", f"larger than {policy.max_bytes} bytes")
        return r.status, r.headers, body, None
    finally:
        conn.close()


def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    """The bytes behind an http(s) URL under ``policy``; raises ImageRejected with the reason."""
    if not policy.remote:
        raise ImageRejected("forbidden", "remote fetching is off (set FLD_FETCH_REMOTE=1 to fetch URLs)")
    deadline = time.monotonic() + policy.deadline_s
    shown = redact(url)
    hops, tries = 0, 0
    while True:
        if time.monotonic() > deadline:
            raise ImageRejected("fetch_failed", f"{shown}: no answer within the {policy.deadline_s:g} s deadline")
        try:
            status, _, body, location = _attempt(url, policy, deadline)
        except ImageRejected as e:
            raise ImageRejected(e.reason, f"{shown}: {e.detail}") from None
        except (OSError, http.client.HTTPException) as e:
            status, body, location = None, None, None
            err = type(e).__name__
        else:
            err = f"HTTP {status}"
        if body is not None:
            return body
        if status in _REDIRECTS:
            hops += 1
            if not location or hops > policy.max_redirects:
                raise ImageRejected("fetch_failed", f"{shown}: too many redirects or a redirect without Location")
            url = urljoin(url, location)  # checked again (scheme, every address) by the next attempt
            shown = redact(url)
            continue
        if (status is None or status in _TRANSIENT) and tries < policy.retries:
            tries += 1
            time.sleep(min(0.5 * 2 ** (tries - 1), max(0.0, deadline - time.monotonic())))
            continue
        raise ImageRejected("fetch_failed", f"{shown}: {err}")
