"""A bounded HTTP/1.1 load generator for bench/webhook.py (asyncio, raw keep-alive sockets).

Run as its own process: reads one JSON config on stdin, prints one JSON result on stdout.

Config: ``port``, ``path``, ``requests`` (path of a JSON file: a list of [body, token]),
``connections``, ``duration`` (s), ``mode`` (``closed``: every connection sends its next
request as soon as the previous answer arrived; ``open``: requests are scheduled at ``rate``
per second whatever the answers do, and latency counts from the scheduled send time, so a
stalled server is not hidden by a stalled client: no coordinated omission), optional
``warmup`` (requests sent first, not measured), optional ``clear_marks``: ``{"redis_url",
"keys"}``, keys deleted each time one round over the request list has been sent (so Redis's
per-connection "sync pending" marks do not turn later pushes into no-ops).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time


def build(port: int, path: str, body: str, token: str) -> bytes:
    data = body.encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"
            f"User-Agent: APIs-Google\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


class Client:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        with open(cfg["requests"]) as fh:
            pairs = json.load(fh)
        self.requests = [build(cfg["port"], cfg["path"], body, token) for body, token in pairs]
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.latencies: list[float] = []
        self.rounds_cleared = 0
        marks = cfg.get("clear_marks")
        if marks:
            import redis

            self.redis = redis.Redis.from_url(marks["redis_url"])
            self.mark_keys = marks["keys"]
        else:
            self.redis = None

    def next_request(self) -> bytes:
        i = self.sent
        self.sent += 1
        if i and i % len(self.requests) == 0 and self.redis is not None:
            self.redis.delete(*self.mark_keys)  # one round sent: every mailbox again
            self.rounds_cleared += 1
        return self.requests[i % len(self.requests)]

    async def connect(self):
        return await asyncio.open_connection("127.0.0.1", self.cfg["port"])

    async def exchange(self, stream, request: bytes):
        """Send one request and read its answer; reconnect when the server closed."""
        for attempt in range(2):
            reader, writer = stream
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                length, close = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "connection" and value.strip().lower() == "close":
                        close = True
                if length:
                    await reader.readexactly(length)
                if close:
                    writer.close()
                    stream = await self.connect()
                return status, stream
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                stream = await self.connect()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def record(self, status: int, latency: float | None) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if latency is not None:
            self.latencies.append(latency)

    async def warmup(self) -> None:
        count = int(self.cfg.get("warmup", 0))
        if self.redis is not None:
            self.redis.delete(*self.mark_keys)
        if not count:
            return
        todo = iter(range(count))

        async def one():
            stream = await self.connect()
            for _ in todo:
                _, stream = await self.exchange(stream, self.next_request())
            stream[1].close()

        await asyncio.gather(*(one() for _ in range(self.cfg["connections"])))
        self.sent = 0
        if self.redis is not None:
            self.redis.delete(*self.mark_keys)

    async def closed(self) -> float:
        end = time.perf_counter() + self.cfg["duration"]

        async def loop():
            stream = await self.connect()
            while True:
                start = time.perf_counter()
                if start >= end:
                    break
                try:
                    status, stream = await self.exchange(stream, self.next_request())
                except OSError:
                    self.errors += 1
                    stream = await self.connect()
                    continue
                done = time.perf_counter()
                self.record(status, done - start)
            stream[1].close()

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(self.cfg["connections"])))
        return time.perf_counter() - started

    async def open(self) -> float:
        rate, duration = float(self.cfg["rate"]), float(self.cfg["duration"])
        queue: asyncio.Queue = asyncio.Queue()
        total = int(rate * duration)

        async def producer(t0: float):
            for k in range(total):
                due = t0 + k / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait(due)
            for _ in range(self.cfg["connections"]):
                queue.put_nowait(None)

        async def consumer():
            stream = await self.connect()
            while (due := await queue.get()) is not None:
                try:
                    status, stream = await self.exchange(stream, self.next_request())
                except OSError:
                    self.errors += 1
                    stream = await self.connect()
                    continue
                self.record(status, time.perf_counter() - due)
            stream[1].close()

        consumers = [asyncio.create_task(consumer()) for _ in range(self.cfg["connections"])]
        await asyncio.sleep(0.2)  # let the connections open before the clock starts
        started = time.perf_counter()
        await producer(started)
        await asyncio.gather(*consumers)
        return time.perf_counter() - started

    async def run(self) -> dict:
        await self.warmup()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = await (self.closed() if self.cfg["mode"] == "closed" else self.open())
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

        return {"completed": len(lat), "elapsed_s": elapsed, "rps": len(lat) / elapsed,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000 if lat
                else 0.0, "statuses": self.statuses, "errors": self.errors,
                "client_cpu_s": cpu, "rounds_cleared": self.rounds_cleared}


def main() -> None:
    cfg = json.loads(sys.stdin.read())
    result = asyncio.run(Client(cfg).run())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
