"""AgentLink against a fake agent on real FIFOs: what a hostile agent can make it hold.

The fake agent answers the handshake like the real one, then sends whatever the test
tells it to: output past its window, garbage, frames for channels never opened, floods.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockade.server.agent.protocol import (
    DEFAULT_WINDOW,
    HELLO_MAGIC,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    encode,
    encode_json,
)
from stockade.server.runtime import agent_link
from stockade.server.runtime.agent_link import AgentLink, AgentLost, AgentSilent

_F_SETPIPE_SZ = 1031


class FakeAgent:
    """The sandbox's end of both FIFOs, held read-write as runsc holds them."""

    def __init__(self, directory: Path) -> None:
        self.in_path = directory / "agent.in"
        self.out_path = directory / "agent.out"
        os.mkfifo(self.in_path, 0o600)
        os.mkfifo(self.out_path, 0o600)
        self.inp = os.open(self.in_path, os.O_RDWR | os.O_NONBLOCK)
        self.out = os.open(self.out_path, os.O_RDWR | os.O_NONBLOCK)
        fcntl.fcntl(self.out, _F_SETPIPE_SZ, 1024 * 1024)
        self.decoder = FrameDecoder()
        self.requests: list[Frame] = []
        self.reading = True  # False: the agent stops reading its input

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.inp)
        os.close(self.inp)
        os.close(self.out)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.inp, self._on_input)

    def _on_input(self) -> None:
        if not self.reading:
            return
        try:
            data = os.read(self.inp, 1 << 20)
        except BlockingIOError:
            return
        for frame in self.decoder.feed(data):
            if frame.type == FrameType.HELLO:
                info = b'{"version":1,"pid":1}'
                self.write(encode(FrameType.HELLO_ACK, 0, HELLO_MAGIC + frame.payload + info))
            else:
                self.requests.append(frame)

    def write(self, data: bytes) -> None:
        """Write all of ``data`` now (the FIFO holds 1 MiB); the test keeps within that."""
        view = memoryview(data)
        while view:
            n = os.write(self.out, view)
            view = view[n:]

    async def send(self, data: bytes) -> None:
        """Write ``data`` however large, as the link reads it."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.out, view[: 1 << 20])
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            view = view[n:]

    def pending(self) -> int:
        """Bytes in the output FIFO not read by the link yet."""
        buf = array.array("i", [0])
        fcntl.ioctl(self.out, termios.FIONREAD, buf)
        return buf[0]

    def request(self, ftype: int) -> Frame:
        return next(f for f in self.requests if f.type == ftype)


class Harness:
    def __init__(self, agent: FakeAgent, link: AgentLink, errors: list[str]) -> None:
        self.agent = agent
        self.link = link
        self.errors = errors

    async def settle(self) -> None:
        """Let the loop run until the link has read everything the agent wrote."""
        for _ in range(200):
            await asyncio.sleep(0)
            if self.link.dead or self.agent.pending() == 0:
                break
        for _ in range(5):
            await asyncio.sleep(0)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    agent = FakeAgent(tmp_path)
    agent.start()
    errors: list[str] = []
    link = AgentLink("sb-test", agent.in_path, agent.out_path, on_protocol_error=errors.append)
    await link.connect(resync=False)
    try:
        yield Harness(agent, link, errors)
    finally:
        link.close()
        agent.close()


def _out(channel: int, data: bytes, ftype: int = FrameType.STDOUT) -> bytes:
    # The real agent never sends more than 64 KiB of output in one frame.
    return b"".join(encode(ftype, channel, data[i : i + 65536]) for i in range(0, len(data), 65536))


async def _exec(h: Harness) -> agent_link.Channel:
    ch = h.link.open()
    await ch.send_json(FrameType.EXEC, {"argv": ["yes"]})
    return ch


# --------------------------------------------------------------------- the window


async def test_output_up_to_the_window_is_accepted(harness: Harness) -> None:
    ch = await _exec(harness)
    harness.agent.write(_out(ch.number, b"x" * DEFAULT_WINDOW))
    await harness.settle()
    assert not harness.link.dead and harness.errors == []
    got = 0
    while got < DEFAULT_WINDOW:
        got += len((await ch.recv()).payload)
    assert got == DEFAULT_WINDOW


async def test_output_past_the_window_closes_the_link(harness: Harness) -> None:
    ch = await _exec(harness)
    harness.agent.write(_out(ch.number, b"x" * (DEFAULT_WINDOW + 1)))
    await harness.settle()
    assert harness.link.dead
    assert len(harness.errors) == 1 and "window" in harness.errors[0]
    assert harness.link.violation == harness.errors[0]
    with pytest.raises(AgentLost, match="broke the protocol"):
        while True:
            await ch.recv()


async def test_grants_extend_the_window(harness: Harness) -> None:
    ch = await _exec(harness)
    for _ in range(4):  # four windows' worth, each granted back as it is read
        harness.agent.write(_out(ch.number, b"y" * DEFAULT_WINDOW))
        got = 0
        while got < DEFAULT_WINDOW:
            frame = await ch.recv()
            got += len(frame.payload)
            ch.grant(len(frame.payload))
    await harness.settle()
    assert not harness.link.dead and harness.errors == []
    # The grants reached the agent as WINDOW frames.
    granted = sum(
        int.from_bytes(f.payload, "big")
        for f in harness.agent.requests
        if f.type == FrameType.WINDOW and f.channel == ch.number
    )
    assert granted == 4 * DEFAULT_WINDOW


async def test_file_read_data_is_windowed_too(harness: Harness) -> None:
    ch = harness.link.open()
    await ch.send_json(FrameType.FILE_READ, {"path": "/big"})
    harness.agent.write(_out(ch.number, b"d" * (DEFAULT_WINDOW + 10), FrameType.DATA))
    await harness.settle()
    assert harness.link.dead and "window" in harness.errors[0]


# ----------------------------------------------------------- garbage, strange frames


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param(b"this is not a frame", id="garbage"),
        pytest.param(
            b"\xa5" + (MAX_PAYLOAD + 1).to_bytes(4, "big") + b"\x0a\0\0\0\1", id="oversized"
        ),
        pytest.param(encode(99, 0, b"{}"), id="unknown-type-on-channel-0"),
        pytest.param(encode(FrameType.STDOUT, 0, b"x"), id="output-on-channel-0"),
        pytest.param(encode(FrameType.HELLO_ACK, 0, HELLO_MAGIC + bytes(16)), id="second-ack"),
        pytest.param(encode(FrameType.STDOUT, 7, b"x"), id="never-opened-channel"),
    ],
)
async def test_garbage_after_the_handshake_closes_the_link(harness: Harness, junk: bytes) -> None:
    ch = await _exec(harness)
    harness.agent.write(junk)
    await harness.settle()
    assert harness.link.dead
    assert len(harness.errors) == 1
    with pytest.raises(AgentLost):
        await ch.recv()
    with pytest.raises(AgentLost):
        harness.link.open()


async def test_padding_and_known_control_frames_are_fine(harness: Harness) -> None:
    codes: list[int] = []
    harness.link._on_entrypoint_exit = codes.append
    harness.agent.write(bytes(4096))  # zero bytes between frames are padding
    harness.agent.write(encode_json(FrameType.ENTRYPOINT_EXIT, 0, {"exit_code": 3}))
    harness.agent.write(encode_json(FrameType.ERROR, 0, {"errno": 22, "message": "?"}))
    await harness.settle()
    assert not harness.link.dead and harness.errors == [] and codes == [3]


async def test_many_errors_on_channel_0_close_the_link(harness: Harness) -> None:
    error = encode_json(FrameType.ERROR, 0, {"errno": 22, "message": "garbage"})
    harness.agent.write(error * agent_link._CONTROL_ERRORS)
    await harness.settle()
    assert not harness.link.dead
    harness.agent.write(error)
    await harness.settle()
    assert harness.link.dead and "channel 0" in harness.errors[0]


async def test_garbage_before_the_handshake_is_an_earlier_session(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)
    agent.write(b"stale bytes of an earlier server's session" + bytes(100))
    agent.start()
    errors: list[str] = []
    link = AgentLink("sb-x", agent.in_path, agent.out_path, on_protocol_error=errors.append)
    try:
        await link.connect(resync=True)
        assert not link.dead and errors == []
    finally:
        link.close()
        agent.close()


# ------------------------------------------------------------ closed channels


async def test_late_frames_of_a_closed_channel_are_tolerated_then_not(harness: Harness) -> None:
    ch = await _exec(harness)
    ch.close()
    # What the agent sent before it read the CLOSE: its window's worth and the EXIT.
    harness.agent.write(_out(ch.number, b"z" * DEFAULT_WINDOW))
    harness.agent.write(encode_json(FrameType.EXIT, ch.number, {"exit_code": 137}))
    await harness.settle()
    assert not harness.link.dead and harness.errors == []
    # After its last frame the agent has forgotten the channel: more is a violation.
    harness.agent.write(_out(ch.number, b"z"))
    await harness.settle()
    assert harness.link.dead and f"channel {ch.number}" in harness.errors[0]


async def test_a_closed_channel_tolerates_only_so_much(harness: Harness) -> None:
    ch = await _exec(harness)
    ch.close()
    allowance = DEFAULT_WINDOW + agent_link._LATE_SLACK
    harness.agent.write(_out(ch.number, b"z" * allowance))
    await harness.settle()
    assert harness.link.dead and "long after it was closed" in harness.errors[0]


async def test_a_closed_channel_is_forgotten_once_the_agent_moved_on(harness: Harness) -> None:
    old = await _exec(harness)
    old.close()
    new = await _exec(harness)  # its request follows the CLOSE: answering it, the agent
    harness.agent.write(encode_json(FrameType.STARTED, new.number, {"pid": 2}))
    await harness.settle()
    assert (await new.recv()).type == FrameType.STARTED
    assert not harness.link.dead
    harness.agent.write(_out(old.number, b"late"))  # ...had read the CLOSE already
    await harness.settle()
    assert harness.link.dead and f"channel {old.number}" in harness.errors[0]


async def test_a_finished_channel_takes_nothing_more(harness: Harness) -> None:
    ch = harness.link.open()
    await ch.send_json(FrameType.FILE_STAT, {"path": "/"})
    harness.agent.write(encode_json(FrameType.RESULT, ch.number, {"path": "/"}))
    harness.agent.write(encode_json(FrameType.RESULT, ch.number, {"path": "/again"}))
    await harness.settle()
    assert harness.link.dead and f"channel {ch.number}" in harness.errors[0]


# --------------------------------------------------------------------- queues


async def test_a_channel_queue_is_bounded(harness: Harness) -> None:
    # A listing's parts have no window; its reader here takes none of them.
    ch = harness.link.open()
    await ch.send_json(FrameType.FILE_LIST, {"path": "/"})
    part = encode(FrameType.DATA, ch.number, b"[" + b" " * (MAX_PAYLOAD - 2) + b"]")
    limit = agent_link._QUEUE_LIMIT
    fits = limit // (MAX_PAYLOAD + agent_link._FRAME_COST)
    await harness.agent.send(part * fits)
    await harness.settle()
    assert not harness.link.dead
    assert ch._queued <= limit
    await harness.agent.send(part)
    await harness.settle()
    assert harness.link.dead and "queued" in harness.errors[0]


async def test_exec_output_queues_no_more_than_the_window(harness: Harness) -> None:
    # A reader that takes nothing: the agent may fill the window, and not one byte more.
    ch = await _exec(harness)
    harness.agent.write(_out(ch.number, b"q" * DEFAULT_WINDOW))
    await harness.settle()
    assert ch._queued <= DEFAULT_WINDOW + 4 * agent_link._FRAME_COST
    harness.agent.write(_out(ch.number, b"q"))
    await harness.settle()
    assert harness.link.dead


# -------------------------------------------------------------- the write buffer


async def test_senders_wait_instead_of_growing_the_buffer(harness: Harness) -> None:
    harness.agent.reading = False  # an agent that stops reading its requests
    ch = harness.link.open()
    await ch.send_json(FrameType.FILE_WRITE, {"path": "/f"})
    chunk = b"u" * MAX_PAYLOAD

    async def upload() -> None:
        for _ in range(32):
            await ch.send(FrameType.DATA, chunk)

    task = asyncio.create_task(upload())
    await asyncio.sleep(0.2)
    assert not task.done()  # waiting for the agent
    assert len(harness.link._wbuf) <= agent_link._BACKLOG_LIMIT + MAX_PAYLOAD + 64
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_agent_that_stops_reading_is_cut_off(harness: Harness) -> None:
    harness.agent.reading = False
    ch = await _exec(harness)
    for _ in range(agent_link._WBUF_LIMIT // 20):  # resizes: small frames that never wait
        ch.post_json(FrameType.RESIZE, {"cols": 80, "rows": 24})
        if harness.link.dead:
            break
    assert harness.link.dead and "stopped reading" in harness.errors[0]
    assert len(harness.link._wbuf) == 0


# -------------------------------------------------------------- the read budget


async def test_one_readiness_callback_reads_at_most_the_budget(harness: Harness) -> None:
    ch = harness.link.open()
    await ch.send_json(FrameType.FILE_LIST, {"path": "/"})
    data = encode(FrameType.DATA, ch.number, b"[" + b" " * (1000 * 1024 - 2) + b"]")
    harness.agent.write(data)
    before = harness.agent.pending()
    assert before == len(data)
    harness.link._on_readable()
    assert before - harness.agent.pending() == agent_link._READ_BUDGET
    await harness.settle()
    assert harness.agent.pending() == 0 and not harness.link.dead
    assert (await ch.recv()).type == FrameType.DATA


async def test_a_flooding_link_does_not_starve_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    flooder, quiet = FakeAgent(tmp_path / "a"), FakeAgent(tmp_path / "b")
    links: list[AgentLink] = []
    for agent in (flooder, quiet):
        agent.start()
        link = AgentLink("sb", agent.in_path, agent.out_path)
        await link.connect(resync=False)
        links.append(link)
    # The flooder's FIFO never runs dry: a sandbox writing faster than the server reads.
    # Zero bytes are padding, legal and cheap, and must be read all the same.
    real_read = os.read
    flooded = links[0]._out_fd
    served = 0

    def read(fd: int, n: int) -> bytes:
        nonlocal served
        if fd == flooded:
            served += n
            return bytes(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)  # the module's os is this os
    flooder.write(b"\0")  # keeps its FIFO readable for the loop
    try:
        ch = links[1].open()
        await ch.send_json(FrameType.FILE_STAT, {"path": "/"})
        quiet.write(encode_json(FrameType.RESULT, ch.number, {"path": "/"}))
        frame = await asyncio.wait_for(ch.recv(), 2.0)
        assert frame.type == FrameType.RESULT
        assert served > 0 and not links[0].dead  # the flood was read, and is no violation
    finally:
        monkeypatch.undo()
        for link in links:
            link.close()
        flooder.close()
        quiet.close()


async def test_an_answer_owed_past_its_deadline_raises_agent_silent() -> None:
    """A stopped agent (``kill -STOP 1``) never answers: callers get AgentSilent, not a
    wait without end, and the link stays up for the agent to come back."""
    link = AgentLink("sb-silent", Path("/nonexistent/in"), Path("/nonexistent/out"))
    ch = link.open()
    with pytest.raises(AgentSilent, match=r"did not answer within 0\.05s"):
        await ch.reply(0.05)
    assert not link.dead
