"""The blocking client against real loopback peers: a daemon, and peers that answer badly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from envcache.client.base import DaemonUnavailable
from envcache.client.sync import Client
from envcache.errors import EnvcacheError, NotFound
from envcache.service.config import Config


@pytest.fixture
async def daemon(make_daemon):
    """A daemon with no default variant base images: definitions without a base resolve offline."""
    return await make_daemon(Config(variants={}))


async def test_answers_and_not_found(daemon) -> None:
    client = Client(daemon)
    health = await asyncio.to_thread(client.health)
    assert health["status"] == "ok"
    with pytest.raises(NotFound, match="no environment 'nobody'"):
        await asyncio.to_thread(client.environment, "nobody")
    assert await asyncio.to_thread(client.resolve, {"environment_variables": {"A": "1"}}, "cpu") is None


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """A loopback TCP server that answers every connection with fixed bytes, then closes."""
    servers: list[asyncio.AbstractServer] = []

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_bad_peers_get_clear_errors(peer) -> None:
    for answer, error, text in [
        (b"", DaemonUnavailable, "no envcache daemon answers"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", EnvcacheError, "malformed answer"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 50\r\n\r\n{}", EnvcacheError, "malformed answer: IncompleteRead"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", EnvcacheError, "malformed answer: JSONDecodeError"),
    ]:
        url = await peer(answer)
        with pytest.raises(error, match=text):
            await asyncio.to_thread(Client(url).health)
    url = await peer(b'HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n'
                     b'{"error": {"status": 503, "message": "draining"}}')
    with pytest.raises(EnvcacheError, match="draining"):
        await asyncio.to_thread(Client(url).health)
