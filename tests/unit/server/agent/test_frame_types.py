"""The server's FrameType and the agent's frame.h name the same numbers: a frame type added
on one side only would be ignored by the other as an unknown type, silently."""

from __future__ import annotations

import re
from importlib import resources

from stockade.server.agent.protocol import FrameType


def test_frame_types_match_the_agents_header() -> None:
    header = (resources.files("stockade.server.agent") / "frame.h").read_text()
    enum = re.search(r"enum \{\s*(T_HELLO = 1.*?)\};", header, re.S)
    assert enum is not None
    in_c = {name: int(value) for name, value in re.findall(r"T_(\w+) = (\d+)", enum.group(1))}
    assert in_c == {t.name: t.value for t in FrameType}
    assert {"FILE_RENAME", "FILE_CHMOD", "FILE_WATCH"} <= in_c.keys()
