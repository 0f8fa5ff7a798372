"""A minimal HTTP/1.1 server for scale tests: answers every GET on every path with one fixed
exposition, keep-alive, nothing else. Runs in its own process (so its CPU is not the collector's)
on 127.0.0.1 and prints its port on the first line of stdout.

Usage: python tests/reliability/static_server.py BODY_FILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


async def main(body: bytes) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")  # GETs carry no body
                if not head.startswith(b"GET "):
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]).read_bytes()))
