"""A plain HTTP/1.1 server for the HTTP layer's own tests (not an AWS imitation): fixed behaviours by path.

  GET  /bytes/N            N bytes of a repeating pattern, with Content-Length
  GET  /short/N            claims N bytes, sends half, then closes (a body cut off mid-way)
  GET  /status/CODE        that status, with a small body
  GET  /slow/SECONDS[/KEY] waits, then answers 200; with KEY, notes its arrival first
  GET  /arrived/KEY        200 once a /slow request with KEY has arrived, else 404: a test waits for it, not for time
  GET  /together/KEY/N      answers 200 once N requests for KEY are waiting at the same time (503 after 10 s):
                            proof that N requests were in flight at once, whatever the machine's load
  GET  /headers            the request's headers as JSON
  PUT  /echo               reads the body, answers its length and SHA-256 as JSON
  POST /echo               same
  GET  /last/PATH          what the last PUT or POST to /PATH received: path, length, sha256, headers
  GET  /flaky/KEY/N        fails with 503 N times for KEY, then 200
  GET  /flakybody/KEY/N/SIZE  the first N times sends half of SIZE bytes and closes, then the whole body
  PUT  /flaky/KEY/N        reads the body; 503 the first N times, then answers like /echo
  GET  /ranged/N/MODE       N bytes of the pattern, honouring `Range: bytes=A-B` with a 206 and Content-Range, and
                           the range's CRC-32C in x-amz-checksum-crc32c. MODE: good; badcrc (a wrong checksum);
                           whole (ignores Range: a 200 with everything); othersize (Content-Range names N+1 bytes)
  PUT  /dropreused/KEY     the first time it arrives on a kept-alive connection, reads the body and closes without
                           a reply (a connection that died while idle); else answers like /echo. /last counts tries.
"""
import base64
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FLAKY = {}
ARRIVED = set()
LAST = {}
LOCK = threading.Lock()
TOGETHER = threading.Condition()
WAITING = {}


def crc32c(data):
    """CRC-32C, bit by bit: slow, but an implementation independent of the one under test."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def pattern(n):
    block = bytes(range(256)) * 256
    out = bytearray()
    while len(out) < n:
        out += block[: n - len(out)]
    return bytes(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle_one_request(self):
        # Requests seen on this connection, this one included.
        self.served = getattr(self, "served", 0) + 1
        super().handle_one_request()

    def send(self, status, body=b"", ctype="application/octet-stream", length=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "bytes":
            return self.send(200, pattern(int(parts[1])))
        if parts[0] == "short":
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(pattern(n // 2))
            self.wfile.flush()
            self.close_connection = True
            return
        if parts[0] == "status":
            return self.send(int(parts[1]), b'{"__type":"StubError","message":"stub says no"}', "application/json")
        if parts[0] == "together":
            key, n = parts[1], int(parts[2])
            with TOGETHER:
                WAITING[key] = WAITING.get(key, 0) + 1
                TOGETHER.notify_all()
                met = TOGETHER.wait_for(lambda: WAITING[key] >= n, timeout=10)
            return self.send(200 if met else 503, b"together" if met else b"alone")
        if parts[0] == "ranged":
            size, mode = int(parts[1]), parts[2]
            body = pattern(size)
            spec = self.headers.get("Range", "")
            if mode == "whole" or not spec.startswith("bytes="):
                return self.send(200, body)
            first, last = (int(x) for x in spec[len("bytes="):].split("-"))
            chunk = body[first:last + 1]
            crc = crc32c(chunk) ^ (1 if mode == "badcrc" else 0)
            total = size + 1 if mode == "othersize" else size
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (first, last, total))
            self.send_header("x-amz-checksum-crc32c", base64.b64encode(crc.to_bytes(4, "big")).decode())
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            self.wfile.write(chunk)
            return
        if parts[0] == "arrived":
            with LOCK:
                arrived = parts[1] in ARRIVED
            return self.send(200 if arrived else 404, b"arrived" if arrived else b"not yet")
        if parts[0] == "slow":
            if len(parts) > 2:
                with LOCK:
                    ARRIVED.add(parts[2])
            time.sleep(float(parts[1]))
            return self.send(200, b"slow")
        if parts[0] == "headers":
            return self.send(200, json.dumps({k: v for k, v in self.headers.items()}).encode(), "application/json")
        if parts[0] == "last":
            with LOCK:
                record = LAST.get(self.path[len("/last"):], {})
            return self.send(200, json.dumps(record).encode(), "application/json")
        if parts[0] == "flakybody":
            key, n, size = parts[1], int(parts[2]), int(parts[3])
            with LOCK:
                FLAKY[key] = FLAKY.get(key, 0) + 1
                count = FLAKY[key]
            if count <= n:
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.write(pattern(size // 2))
                self.wfile.flush()
                self.close_connection = True
                return
            return self.send(200, pattern(size))
        if parts[0] == "flaky":
            key, n = parts[1], int(parts[2])
            with LOCK:
                FLAKY[key] = FLAKY.get(key, 0) + 1
                count = FLAKY[key]
            if count <= n:
                return self.send(503, b"<Error><Code>SlowDown</Code><Message>later</Message></Error>", "application/xml")
            return self.send(200, b"ok after %d" % count)
        self.send(404, b"no such path")

    def do_echo(self):
        parts = self.path.strip("/").split("/")
        tries = 1
        if parts[0] == "dropreused":
            with LOCK:
                tries = FLAKY[self.path] = FLAKY.get(self.path, 0) + 1
                drop = self.served > 1 and tries == 1
            if drop:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.close_connection = True
                return
        if parts[0] == "flaky":
            with LOCK:
                FLAKY[parts[1]] = FLAKY.get(parts[1], 0) + 1
                fail = FLAKY[parts[1]] <= int(parts[2])
            if fail:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return self.send(503, b"<Error><Code>SlowDown</Code><Message>later</Message></Error>", "application/xml")
        length = int(self.headers.get("Content-Length") or 0)
        digest = hashlib.sha256()
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
        with LOCK:
            LAST[self.path] = {"path": self.path, "length": length - remaining, "sha256": digest.hexdigest(),
                               "headers": {k.lower(): v for k, v in self.headers.items()}, "tries": tries}
        body = json.dumps({"length": length - remaining, "sha256": digest.hexdigest(),
                           "contentType": self.headers.get("Content-Type"),
                           "transferEncoding": self.headers.get("Transfer-Encoding")}).encode()
        self.send(200, body, "application/json")

    do_PUT = do_echo
    do_POST = do_echo


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever()
