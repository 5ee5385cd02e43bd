"""A TCP proxy that caps each connection's speed, for scripts/bench: S3 serves one connection at roughly 85-100 MB/s,
and a client reaches an instance's link speed only through several. nginx's `limit_rate` caps GET bodies; this caps
what a client sends (PUT bodies) on its way to SeaweedFS. Transparent: bytes pass unchanged, so signatures hold.

    python3 throttle_proxy.py --port P --upstream 127.0.0.1:Q --up-mbps 40 [--down-mbps N]

One token bucket per connection and direction, holding at most `burst` bytes of credit.
"""
import argparse
import asyncio
import time

CHUNK = 256 << 10


async def pipe(reader, writer, rate, burst):
    # A token bucket: credit accrues at `rate` up to `burst`, so a connection idle between requests (kept alive) does
    # not save up more than `burst` to spend at once.
    tokens, last = float(burst), time.monotonic()
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            if rate:
                now = time.monotonic()
                tokens = min(burst, tokens + (now - last) * rate)
                last = now
                if tokens < len(data):
                    await asyncio.sleep((len(data) - tokens) / rate)
                    tokens, last = 0.0, time.monotonic()
                else:
                    tokens -= len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def handle(client_reader, client_writer, args):
    host, port = args.upstream.rsplit(":", 1)
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        client_writer.close()
        return
    up = asyncio.create_task(pipe(client_reader, upstream_writer, args.up_mbps * 1e6, args.burst))
    down = asyncio.create_task(pipe(upstream_reader, client_writer, args.down_mbps * 1e6, args.burst))
    await asyncio.wait([up, down], return_when=asyncio.ALL_COMPLETED)
    for w in (client_writer, upstream_writer):
        w.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--up-mbps", type=float, default=0, help="MB/s per connection, client to upstream; 0: no cap")
    parser.add_argument("--down-mbps", type=float, default=0, help="MB/s per connection, upstream to client")
    parser.add_argument("--burst", type=int, default=1 << 20)
    args = parser.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(r, w, args), "127.0.0.1", args.port, limit=CHUNK)
    async with server:
        await server.serve_forever()


asyncio.run(main())
