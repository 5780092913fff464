"""The image figures of ``make bench``.

- resolving an image whose layers are all built (the SDK's build call, answered from the
  layer cache) and a rebuild after its last step changed;
- create → first output from a 1 GB image against the same from its base image: the
  layers are mounted, never copied, so the ratio should be close to 1.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from stockade import Client, Image, Sandbox

Row = tuple[str, list[float], list[float], str]


def image_rows(runs: int, timed: Callable[[Callable[[], object], int], list[float]]) -> list[Row]:
    rows: list[Row] = []
    marker = secrets.token_hex(4)
    with Client() as client:
        small = Image.from_name("debian").run_commands(f"echo {marker} > /m").env({"A": "1"})
        client.build(small)
        cached = timed(lambda: client.build(small), runs)
        counter = iter(range(10**6))

        def rebuild_last() -> None:
            client.build(small.run_commands(f"echo {next(counter)} > /n"))

        rows.append(("resolve a built image (all cached)", cached, timed(rebuild_last, runs),
                     "last changed"))  # fmt: skip

        big = Image.from_name("debian").run_commands(
            f"echo {marker}; head -c 1073741824 /dev/urandom > /big"
        )
        big_id = client.build(big, timeout=1800).pinned or ""

    created: list[Sandbox] = []

    def create(image: str) -> Callable[[], object]:
        def go() -> None:
            sb = Sandbox.create(image=image, timeout=120)
            p = sb.exec("echo", "hi")
            assert p.stdout.readline() == "hi\n"
            p.wait()
            created.append(sb)

        return go

    from_big = timed(create(big_id), runs)
    for sb in created:
        sb.terminate()
    created.clear()
    from_base = timed(create("debian"), runs)
    for sb in created:
        sb.terminate()
    rows.append(("create → first output, 1 GB image", from_big, from_base, "base image"))
    return rows
