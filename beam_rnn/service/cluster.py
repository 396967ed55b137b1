"""What one worker of ``beam-rnn serve --workers N`` knows of the others: who holds a session, how to ask them.

Every worker serves the same app on the shared TCP port and on a private Unix socket
of its own (in a directory only the service's user can open, `beam_rnn.service.workers`).
`Peers` is a worker's view of those sockets:

* a ``/v1/stream/{id}`` session lives in one worker, its owner: a stable hash of the id
  modulo N (`Peers.owner`); a request that lands on another worker is passed to the
  owner and its answer returned unchanged, so a client sees one service whichever
  worker its connection reaches;
* ``/metrics`` and ``/readyz`` are the service's: the worker that gets the request asks
  the others for theirs (``?scope=worker``: one worker's own answer) and sums the
  metrics (`beam_rnn.service.metrics.merge_expositions`) or is ready only when all are.

WebSocket sessions need none of this: a socket stays in the worker that accepted it.
"""

import asyncio
import zlib
from collections.abc import Sequence

import httpx

WORKER_SCOPE = "worker"  # ?scope=worker: the answering worker's own /metrics or /readyz
FORWARD_TIMEOUT_SECONDS = 30.0
PEER_TIMEOUT_SECONDS = 10.0  # a restarting worker's socket holds the connection until it serves again


class Peers:
    """The workers of one service, by index, and this worker's own index.

    Args:
        index: This worker's index in `paths`.
        paths: Every worker's Unix socket, by index.
    """

    def __init__(self, index: int, paths: Sequence[str]):
        if not 0 <= index < len(paths):
            raise ValueError(f"worker index {index} out of range for {len(paths)} workers")
        self.index = index
        self.paths = tuple(paths)
        self._clients: dict[int, httpx.AsyncClient] = {}

    @property
    def count(self) -> int:
        return len(self.paths)

    @property
    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    def owner(self, session_id: str) -> int:
        """The worker that holds /v1/stream session `session_id` (the same in every worker and every run)."""
        return zlib.crc32(session_id.encode("utf-8")) % self.count

    def _client(self, index: int) -> httpx.AsyncClient:
        client = self._clients.get(index)
        if client is None:  # keep-alive connections to that worker, made on first use (on the serving loop)
            client = self._clients[index] = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=self.paths[index]), base_url="http://worker",
                timeout=FORWARD_TIMEOUT_SECONDS)
        return client

    async def request(self, index: int, method: str, path: str, body: bytes | None = None,
                      timeout: float = FORWARD_TIMEOUT_SECONDS) -> httpx.Response:
        """`method` `path` on worker `index`, over its Unix socket.

        Raises:
            httpx.HTTPError: the worker did not answer (connection refused or reset, timeout).
        """
        headers = {"content-type": "application/json"} if body is not None else None
        return await self._client(index).request(method, path, content=body, headers=headers, timeout=timeout)

    async def ask_others(self, path: str) -> dict[int, httpx.Response | httpx.HTTPError]:
        """GET `path` (``?scope=worker`` added) on every other worker at once: its response, or why there is none."""
        query = f"{path}?scope={WORKER_SCOPE}"

        async def one(index: int) -> httpx.Response | httpx.HTTPError:
            try:
                return await self.request(index, "GET", query, timeout=PEER_TIMEOUT_SECONDS)
            except httpx.HTTPError as e:
                return e

        others = self.others
        return dict(zip(others, await asyncio.gather(*(one(i) for i in others))))

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
