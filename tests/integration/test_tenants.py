"""Tenants and API keys against a real server and real sandboxes: keys work as the token
does, roles limit them, and a tenant never reaches another's objects through any route.

The isolation cases come from the server's live OpenAPI document: every route whose path
names a sandbox, snapshot or volume is tried with another tenant's IDs, so a route added
later is covered without editing this test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stockade import (
    AsyncClient,
    AsyncSandbox,
    AuthenticationError,
    Client,
    ForbiddenError,
    Image,
    NotFoundError,
    Sandbox,
    StockadeError,
)

from .conftest import LiveServer
from .helpers import unique

pytestmark = pytest.mark.runsc

STOCKADE = str(Path(sys.executable).parent / "stockade")


@dataclass
class Tenant:
    name: str
    keys: dict[str, str]  # role → key
    key_ids: dict[str, str]


def _tenant(http: httpx.Client) -> Tenant:
    name = unique("tn")
    assert http.post("/v1/tenants", json={"name": name}).status_code == 201
    keys, ids = {}, {}
    for role in ("readonly", "user", "admin"):
        made = http.post("/v1/keys", json={"tenant": name, "role": role, "name": role})
        assert made.status_code == 201, made.text
        keys[role], ids[role] = made.json()["key"], made.json()["id"]
    return Tenant(name, keys, ids)


@pytest.fixture(scope="module")
def tenants(server: LiveServer) -> Iterator[tuple[Tenant, Tenant]]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
        yield _tenant(http), _tenant(http)


@pytest.fixture(scope="module")
def owned(server: LiveServer, tenants: tuple[Tenant, Tenant]) -> Iterator[dict[str, str]]:
    """Objects of the first tenant, made with its user key: a sandbox, a snapshot of it and
    a volume."""
    acme = tenants[0]
    with Client(server.url, acme.keys["user"]) as client:
        sb = Sandbox.create(image="debian", timeout=600, client=client)
        try:
            sb.files.write("/tmp/secret.txt", "acme only\n")
            snap = sb.snapshot()
            vol = client.request("POST", "/v1/volumes", json={"name": unique("vol")})
            yield {"sandbox_id": sb.id, "snapshot_id": snap.id, "name_or_id": vol["name"]}
        finally:
            sb.terminate()


def test_a_key_works_as_the_token_does_within_its_role(
    server: LiveServer, tenants: tuple[Tenant, Tenant], owned: dict[str, str]
) -> None:
    acme, _ = tenants
    with Client(server.url, acme.keys["user"]) as client:
        sb = Sandbox.from_id(owned["sandbox_id"], client=client)
        assert sb.run(["cat", "/tmp/secret.txt"]).stdout == "acme only\n"
    with Client(server.url, acme.keys["readonly"]) as reader:
        ids = [s.id for s in Sandbox.list(client=reader)]
        assert owned["sandbox_id"] in ids
        assert reader.request("GET", f"/v1/sandboxes/{owned['sandbox_id']}/files/stat",
                              params={"path": "/tmp/secret.txt"})["size"] == 10  # fmt: skip
        with pytest.raises(ForbiddenError, match="needs a user key; this readonly key"):
            Sandbox.create(image="debian", client=reader)
        with pytest.raises(ForbiddenError, match="user key"):
            Sandbox.from_id(owned["sandbox_id"], client=reader).run(["true"])
    with Client(server.url, acme.keys["user"]) as user:
        with pytest.raises(ForbiddenError, match="needs a admin key"):
            user.request("POST", "/v1/keys", json={"role": "user"})
        with pytest.raises(ForbiddenError, match="admin token"):
            user.request("POST", "/v1/images/gc")
    with Client(server.url, acme.keys["admin"]) as admin:
        made = admin.request("POST", "/v1/keys", json={"role": "readonly", "name": "x"})
        assert made["tenant"] == acme.name and made["key"].startswith("stk_")
        listed = admin.request("GET", "/v1/keys")["keys"]
        assert {k["tenant"] for k in listed} == {acme.name}
        assert all("key" not in k for k in listed)  # the key itself is shown once only
        with pytest.raises(ForbiddenError, match="admin token"):
            admin.request("POST", "/v1/tenants", json={"name": unique("tn")})
        # The warm pools are the operator's: not even shown to a tenant's admin.
        with pytest.raises(ForbiddenError, match="admin token"):
            admin.request("GET", "/v1/pools")
        with pytest.raises(ForbiddenError, match="admin token"):
            admin.request("POST", "/v1/keys", json={"tenant": tenants[1].name})


# Routes authorised by a signed URL (files.upload_url / download_url) instead of a key.
_SIGNED = "/v1/signed/"


def _routes(server: LiveServer) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json", headers=server.headers).json()
    found = []
    for path, item in spec["paths"].items():
        params = set(re.findall(r"{(\w+)(?::\w+)?}", path))
        if params & {"sandbox_id", "snapshot_id"} or (
            path.startswith("/v1/volumes/") and "name_or_id" in params
        ):
            found += [(method.upper(), path) for method in item]
    return found


def test_another_tenants_objects_answer_as_missing_on_every_route(
    server: LiveServer, tenants: tuple[Tenant, Tenant], owned: dict[str, str]
) -> None:
    _, globex = tenants
    routes = _routes(server)
    # The document names the routes this test must cover; a sanity floor, not a list.
    assert len(routes) > 20 and ("POST", "/v1/sandboxes/{sandbox_id}/exec") in routes
    fake = {"sandbox_id": "sb-00000000deadbeef", "snapshot_id": "sn-00000000deadbeef",
            "name_or_id": "vol-00000000deadbeef"}  # fmt: skip
    headers = {"Authorization": f"Bearer {globex.keys['admin']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        for method, template in routes:
            path = re.sub(r"{(\w+)(?::\w+)?}", lambda m: owned.get(m.group(1), "8080"), template)
            missing = re.sub(
                r"{(\w+)(?::\w+)?}", lambda m: fake.get(m.group(1), "8080"), template
            )
            got = http.request(method, path, params={"path": "/tmp/secret.txt"}, json={})
            if template.startswith(_SIGNED):
                # Its credential is a URL's signature, not a key: refused the same, word for
                # word, whether the sandbox is another tenant's or no one's.
                none = http.request(method, missing, params={"path": "/tmp/secret.txt"})
                assert got.status_code == none.status_code == 403, (method, template, got.text)
                assert got.json() == none.json(), (method, template)
                continue
            assert got.status_code == 404, (method, template, got.status_code, got.text)
            assert got.json()["error"]["code"] == "not_found", (method, template)
            # Word for word what an ID that exists nowhere gets: nothing tells them apart.
            none = http.request(method, missing, params={"path": "/tmp/secret.txt"}, json={})
            assert none.status_code == 404
            ours = got.json()["error"]["message"]
            theirs = none.json()["error"]["message"]
            for kind, value in owned.items():
                ours = ours.replace(value, fake[kind])
            assert ours == theirs, (method, template)
        listed = http.get("/v1/sandboxes").json()["sandboxes"]
        assert owned["sandbox_id"] not in {s["id"] for s in listed}
        assert http.get("/v1/snapshots").json()["snapshots"] == []
        volumes = http.get("/v1/volumes").json()["volumes"]
        assert owned["name_or_id"] not in {v["name"] for v in volumes}
        # Nor through what a create names in its body.
        for named in ({"snapshot": owned["snapshot_id"]},
                      {"volumes": {"/data": owned["name_or_id"]}}):  # fmt: skip
            made = http.post("/v1/sandboxes", json={"image": "debian", **named})
            assert made.status_code == 404, made.text
    # Nothing was touched: the sandbox runs on with its file, the snapshot is there.
    with Client(server.url, tenants[0].keys["user"]) as acme:
        sb = Sandbox.from_id(owned["sandbox_id"], client=acme)
        assert sb.run(["cat", "/tmp/secret.txt"]).stdout == "acme only\n"
        assert acme.request("GET", f"/v1/snapshots/{owned['snapshot_id']}")["id"]


def test_volume_names_are_per_tenant(
    server: LiveServer, tenants: tuple[Tenant, Tenant], owned: dict[str, str]
) -> None:
    acme, globex = tenants
    name = owned["name_or_id"]
    with Client(server.url, globex.keys["user"]) as client:
        # The name another tenant uses is free here: neither "taken" nor theirs handed over.
        mine = client.request("POST", "/v1/volumes", json={"name": name, "size": 64})
        try:
            got = client.request("GET", f"/v1/volumes/{name}")
            assert got["id"] == mine["id"]
            sb = Sandbox.create(image="debian", volumes={"/data": name}, client=client)
            try:
                sb.files.write("/data/whose.txt", "globex\n")
            finally:
                sb.terminate()
        finally:
            client.request("DELETE", f"/v1/volumes/{name}")
    with Client(server.url, acme.keys["user"]) as client:
        theirs = client.request("GET", f"/v1/volumes/{name}")
        assert theirs["id"] != mine["id"]  # acme's volume is untouched by the delete
        sb = Sandbox.create(image="debian", volumes={"/data": name}, client=client)
        try:
            assert not sb.files.exists("/data/whose.txt")
        finally:
            sb.terminate()


def test_image_names_and_builds_are_per_tenant(
    server: LiveServer, tenants: tuple[Tenant, Tenant]
) -> None:
    acme, globex = tenants
    name = unique("tool")
    recipe = Image.debian_slim().run_commands("echo built-by-a-tenant > /who")
    with Client(server.url, acme.keys["user"]) as a, Client(server.url, globex.keys["user"]) as b:
        built = a.build(recipe, tag=f"{name}:v1")
        assert built.name == f"{name}:v1"
        assert f"{name}:v1" in {i.name for i in a.images()}
        sb = Sandbox.create(image=f"{name}:v1", client=a)
        try:
            assert sb.run(["cat", "/who"]).stdout == "built-by-a-tenant\n"
        finally:
            sb.terminate()
        # Another tenant sees neither the name nor the build, by name or by ID.
        assert f"{name}:v1" not in {i.name for i in b.images()}
        assert built.pinned is not None and built.pinned.startswith("img-")
        with pytest.raises(NotFoundError):
            Sandbox.create(image=built.pinned, client=b)
        # Its name is, to the other tenant, any name nobody made: a registry reference.
        with pytest.raises(StockadeError) as theirs_by_name:
            Sandbox.create(image=f"{name}:v1", client=b)
        with pytest.raises(StockadeError) as nobodys:
            Sandbox.create(image=f"{name}x:v1", client=b)
        assert type(theirs_by_name.value) is type(nobodys.value)
        assert str(theirs_by_name.value).replace(name, f"{name}x") == str(nobodys.value)
        # The same steps built by it are its own build, with its own layers.
        theirs = b.build(recipe, tag=f"{name}:v1")
        assert theirs.pinned != built.pinned
        assert f"{name}:v1" in {i.name for i in b.images()}
        b.delete_image(f"{name}:v1")
        assert f"{name}:v1" in {i.name for i in a.images()}  # untouched by the other's delete
    with Client(server.url, server.token) as operator:
        assert f"{name}:v1" not in {i.name for i in operator.images()}  # names are per tenant


def test_the_exec_websocket_is_guarded_too(
    server: LiveServer, tenants: tuple[Tenant, Tenant], owned: dict[str, str]
) -> None:
    _, globex = tenants
    with (
        Client(server.url, globex.keys["user"]) as client,
        pytest.raises(NotFoundError, match="does not exist"),
    ):
        Sandbox.from_id(owned["sandbox_id"], client=client).exec("true").wait()


def test_a_revoked_key_stops_at_once_even_mid_stream(
    server: LiveServer, tenants: tuple[Tenant, Tenant], owned: dict[str, str]
) -> None:
    acme, _ = tenants
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as admin:
        made = admin.post("/v1/keys", json={"tenant": acme.name, "role": "user"}).json()

    async def scenario() -> BaseException | None:
        async with AsyncClient(server.url, made["key"]) as client:
            sb = await AsyncSandbox.from_id(owned["sandbox_id"], client=client)
            proc = await sb.exec("sh", "-c", "echo up; sleep 60")
            assert (await proc.stdout.readline()).strip() == "up"
            async with httpx.AsyncClient(
                base_url=server.url, headers=server.headers
            ) as admin_client:
                revoked = await admin_client.delete(f"/v1/keys/{made['id']}")
                assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except AuthenticationError as exc:
                return exc
            finally:
                await proc.aclose()
            return None

    error = asyncio.run(scenario())
    assert isinstance(error, AuthenticationError) and "revoked" in str(error)
    with Client(server.url, made["key"]) as client, pytest.raises(AuthenticationError,
                                                                   match="revoked"):  # fmt: skip
        Sandbox.list(client=client)


def test_a_revoked_key_ends_an_ndjson_exec_stream_too(
    server: LiveServer, tenants: tuple[Tenant, Tenant], owned: dict[str, str]
) -> None:
    acme, _ = tenants
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as admin:
        made = admin.post("/v1/keys", json={"tenant": acme.name, "role": "user"}).json()

    async def scenario() -> BaseException | None:
        async with AsyncClient(server.url, made["key"]) as client:
            sb = await AsyncSandbox.from_id(owned["sandbox_id"], client=client)
            up = asyncio.Event()
            run = asyncio.create_task(sb.run("echo up; sleep 60", on_stdout=lambda _: up.set()))
            async with asyncio.timeout(30):
                await up.wait()
            async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as admin:
                assert (await admin.delete(f"/v1/keys/{made['id']}")).status_code == 200
            try:
                async with asyncio.timeout(10):
                    await run
            except AuthenticationError as exc:
                return exc
            return None

    error = asyncio.run(scenario())
    assert isinstance(error, AuthenticationError) and f"{made['id']} was revoked" in str(error)


def test_the_cli_prints_a_new_key_alone(server: LiveServer) -> None:
    env = {**os.environ, "STOCKADE_URL": server.url, "STOCKADE_TOKEN": server.token}
    name = unique("tn")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STOCKADE, *args], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    assert cli("tenant", "create", name, "--max-sandboxes", "3").returncode == 0
    assert cli("tenant", "set", name, "--max-cpu", "4", "--unset", "max_sandboxes").returncode == 0
    quotas = json.loads(cli("tenant", "ls", "--json").stdout)
    assert next(t for t in quotas if t["name"] == name)["quotas"] == {"max_cpu": 4.0}
    made = cli("key", "create", "--tenant", name, "--role", "readonly", "--expires", "30d",
               "--name", "ci-bot")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout
    assert re.fullmatch(r"stk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\n", key), key
    listed = cli("key", "ls", "--tenant", name)
    assert "ci-bot" in listed.stdout and key.strip() not in listed.stdout
    assert name in cli("tenant", "ls").stdout
    as_key = {**env, "STOCKADE_TOKEN": key.strip()}
    mine = subprocess.run([STOCKADE, "ls"], env=as_key, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert mine.returncode == 0, mine.stderr
    key_id = re.search(r"key-[0-9a-f]{16}", made.stderr)
    assert key_id is not None
    assert cli("key", "revoke", key_id.group(0)).returncode == 0
    assert cli("tenant", "rm", name).returncode == 0
    gone = subprocess.run([STOCKADE, "ls"], env=as_key, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert gone.returncode == 1 and "wrong token" in gone.stderr
