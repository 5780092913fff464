"""A running sandbox's network policy and exposed ports, and where the port proxy finds
them."""

from __future__ import annotations

from ....errors import ConflictError, NotFoundError
from ...network.policy import NetworkPolicy
from ...state.records import ExposedPort, SandboxRecord
from ...state.store import Store
from ..ports import PortTarget
from .launch import Launcher
from .live import LiveSandboxes
from .lookup import get, get_running

__all__ = ["SandboxPorts"]


class SandboxPorts:
    """Changes to a running sandbox's network policy and exposed ports, under its lock."""

    def __init__(self, store: Store, live: LiveSandboxes, launcher: Launcher) -> None:
        self.store = store
        self.live = live
        self.launcher = launcher

    async def set_network(self, sandbox_id: str, policy: NetworkPolicy) -> SandboxRecord:
        await get(self.store, sandbox_id)
        async with self.live[sandbox_id].lock:
            record = await get_running(self.store, sandbox_id)
            await self.launcher.apply_policy(record, policy)
            await self.store.put_sandbox(record)
        return record

    async def expose(self, sandbox_id: str, port: int, public: bool) -> SandboxRecord:
        await get(self.store, sandbox_id)
        async with self.live[sandbox_id].lock:
            record = await get_running(self.store, sandbox_id)
            record.ports = [p for p in record.ports if p.port != port]
            record.ports.append(ExposedPort(port, public))
            record.ports.sort(key=lambda p: p.port)
            await self.store.put_sandbox(record)
        return record

    async def unexpose(self, sandbox_id: str, port: int) -> SandboxRecord:
        await get(self.store, sandbox_id)
        async with self.live[sandbox_id].lock:
            record = await get_running(self.store, sandbox_id)
            if record.exposed(port) is None:
                raise NotFoundError(f"port {port} of sandbox {sandbox_id} is not exposed")
            record.ports = [p for p in record.ports if p.port != port]
            await self.store.put_sandbox(record)
        return record

    async def resolve(self, record: SandboxRecord, port: int) -> PortTarget:
        """Where the port proxy sends traffic for ``port`` of a running sandbox."""
        sandbox_id = record.id
        exposed = record.exposed(port)
        if exposed is None:
            listed = ", ".join(str(p.port) for p in record.ports) or "none"
            raise NotFoundError(
                f"port {port} of sandbox {sandbox_id} is not exposed (exposed: {listed}); "
                "create the sandbox with ports=[...] or call sb.expose(port)"
            )
        net = record.network
        if NetworkPolicy.from_dict(net.policy if net else {}).block_network:
            raise ConflictError(
                f"sandbox {sandbox_id} runs with block_network=True, so nothing reaches it, "
                "not even its exposed ports; open it with set_network() first"
            )
        if net is None or not net.ip:
            raise ConflictError(
                f"sandbox {sandbox_id} has no network: {net.reason if net else None}"
            )
        return PortTarget(
            host=net.ip, port=port, public=exposed.public,
            access_token=record.access_token or "",
        )  # fmt: skip

