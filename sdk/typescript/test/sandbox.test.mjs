import assert from "node:assert/strict";
import { test } from "node:test";
import {
  AuthenticationError,
  Client,
  CommandError,
  CommandTimeoutError,
  InvalidArgumentError,
  NotFoundError,
  Sandbox,
  SandboxTerminatedError,
  StockadeError,
} from "../dist/index.js";
import { URL, sandbox } from "./helpers.mjs";

test("run returns stdout, stderr and the exit code; check turns a failure into CommandError", async (t) => {
  const sb = await sandbox(t, { env: { GREETING: "hej" } });
  assert.match(sb.id, /^sb-/);
  const r = await sb.run("echo $GREETING; echo oops >&2; exit 3");
  assert.equal(r.stdout, "hej\n");
  assert.equal(r.stderr, "oops\n");
  assert.equal(r.exitCode, 3);
  assert.equal(r.ok, false);
  const piped = await sb.run(["sh", "-c", "tr a-z A-Z"], { stdin: "shout" });
  assert.equal(piped.stdout, "SHOUT");
  const binary = await sb.run(["od", "-An", "-tu1"], { stdin: new Uint8Array([0, 255, 7]) });
  assert.deepEqual(binary.stdout.trim().split(/\s+/), ["0", "255", "7"]);
  await assert.rejects(sb.run("exit 7", { check: true }), (exc) => {
    assert.ok(exc instanceof CommandError && exc instanceof StockadeError);
    assert.equal(exc.result.exitCode, 7);
    return true;
  });
  await assert.rejects(sb.run("sleep 5", { timeout: 0.3 }), CommandTimeoutError);
});

test("exec streams stdout line by line as it is produced, takes stdin and waits", async (t) => {
  const sb = await sandbox(t);
  // The command waits for stdin after its first line: a line that arrives before the write
  // proves output streams rather than arriving at exit.
  const p = await sb.exec(["sh", "-c", "echo ready; read x; echo got $x; echo bye >&2; exit 4"]);
  const lines = p.stdout[Symbol.asyncIterator]();
  assert.deepEqual(await lines.next(), { done: false, value: "ready\n" });
  assert.equal(p.poll(), undefined);
  await p.stdin.write("ping\n");
  await p.stdin.close();
  assert.deepEqual(await lines.next(), { done: false, value: "got ping\n" });
  assert.equal((await lines.next()).done, true);
  assert.equal(await p.stderr.text(), "bye\n");
  assert.equal(await p.wait(), 4);
  assert.equal(p.exitCode, 4);

  // Much output on stderr while only stdout is read, then a kill.
  const noisy = await sb.exec(["sh", "-c", "head -c 3000000 /dev/zero >&2; echo done"]);
  assert.equal(await noisy.stdout.text(), "done\n");
  assert.equal((await noisy.stderr.bytes()).length, 3000000);
  assert.equal(await noisy.wait(), 0);

  const sleeper = await sb.exec(["sleep", "60"]);
  await sleeper.kill();
  assert.equal(await sleeper.wait(), 137);

  const late = await sb.exec(["sleep", "5"], { timeout: 0.3 });
  await assert.rejects(late.wait(), CommandTimeoutError);
  assert.equal(late.timedOut, true);

  // A terminal: the command sees a tty of the size asked for, stderr merged into stdout.
  const tty = await sb.exec(["sh", "-c", "tty; stty size; echo err >&2"], { pty: true, cols: 100, rows: 30 });
  const screen = await tty.stdout.text();
  assert.match(screen, /^\/dev\/pts\/\d+\r?\n30 100\r?\nerr/);
  assert.equal(await tty.stderr.text(), "");
  assert.equal(await tty.wait(), 0);
});

test("files: write, read, list, stat, exists, mkdir, remove, rename, chmod, watch and signed URLs", async (t) => {
  const sb = await sandbox(t);
  const payload = Buffer.from(Array.from({ length: 70000 }, (_, i) => i % 256));
  const info = await sb.files.write("/work/data/blob.bin", payload);
  assert.equal(info.size, payload.length);
  assert.deepEqual(await sb.files.read("/work/data/blob.bin"), payload);
  await sb.files.write("/work/data/note.txt", "héllo\n");
  assert.equal(await sb.files.readText("/work/data/note.txt"), "héllo\n");
  assert.deepEqual((await sb.files.list("/work/data")).map((e) => e.name), ["blob.bin", "note.txt"]);
  assert.equal((await sb.files.stat("/work/data")).type, "dir");
  await sb.files.mkdir("/work/empty/deeper");
  assert.equal(await sb.files.exists("/work/empty/deeper"), true);
  await sb.files.remove("/work/data/note.txt");
  assert.equal(await sb.files.exists("/work/data/note.txt"), false);
  await assert.rejects(sb.files.read("/work/data/note.txt"), NotFoundError);
  await sb.files.remove("/work", { recursive: true });
  assert.equal(await sb.files.exists("/work"), false);
  // rename, chmod, and a watch that sees a change made after it resolved.
  await sb.files.write("/srv/a.txt", "a");
  assert.equal((await sb.files.rename("/srv/a.txt", "/srv/b.txt")).name, "b.txt");
  assert.equal((await sb.files.chmod("/srv/b.txt", 0o600)).mode & 0o777, 0o600);
  const events = await sb.files.watch("/srv");
  await sb.files.write("/srv/new.txt", "n");
  const seen = [];
  for await (const event of events) {
    seen.push(event);
    if (event.path === "/srv/new.txt") break;
  }
  assert.ok(seen.some((e) => e.type === "create" && e.path === "/srv/new.txt" && !e.isDir), JSON.stringify(seen));
  // Signed URLs work for a client that holds no key.
  const up = await sb.files.uploadUrl("/srv/up.txt", { expires: 60 });
  assert.equal((await fetch(up, { method: "PUT", body: "via url" })).ok, true);
  const down = await fetch(await sb.files.downloadUrl("/srv/up.txt"));
  assert.equal(await down.text(), "via url");
  // What run() sees is what files wrote.
  await sb.files.write("/tmp/x.txt", "from files");
  assert.equal((await sb.run("cat /tmp/x.txt")).stdout, "from files");
});

test("errors are typed: 404 for a missing sandbox, 401 for a bad token, 409 once terminated", async (t) => {
  await assert.rejects(Sandbox.fromId("sb-doesnotexist"), (exc) => {
    assert.ok(exc instanceof NotFoundError);
    assert.equal(exc.code, "not_found");
    assert.equal(exc.status, 404);
    assert.match(exc.message, /sb-doesnotexist/);
    return true;
  });
  const stranger = new Client({ url: URL, token: "sk_wrong" });
  t.after(() => stranger.close());
  await assert.rejects(Sandbox.list({ client: stranger }), (exc) => {
    assert.ok(exc instanceof AuthenticationError);
    assert.equal(exc.status, 401);
    assert.equal(exc.code, "unauthorized");
    return true;
  });
  await assert.rejects(new Client({ url: "http://127.0.0.1:1", token: "x" }).request("GET", "/v1/sandboxes"), (exc) => {
    assert.equal(exc.name, "StockadeConnectionError");
    assert.match(exc.message, /could not reach/);
    return true;
  });
  await assert.rejects(Sandbox.create({ image: "debian", memory: 1 }), (exc) => {
    assert.ok(exc instanceof InvalidArgumentError);
    assert.equal(exc.status, 422);
    assert.match(exc.message, /memory/);
    return true;
  });
  const sb = await sandbox(t);
  const ended = await sb.terminate();
  assert.equal(ended.status, "terminated");
  await assert.rejects(sb.run("true"), SandboxTerminatedError);
  await assert.rejects(sb.exec(["true"]), SandboxTerminatedError);
});

test("list finds sandboxes by tag; fromId finds one by ID", async (t) => {
  const tag = `ts-${process.pid}-${Date.now()}`;
  const a = await sandbox(t, { tags: { run: tag } });
  const b = await sandbox(t, { tags: { run: tag, role: "b" } });
  const found = await Sandbox.list({ tags: { run: tag } });
  assert.deepEqual(new Set(found.map((s) => s.id)), new Set([a.id, b.id]));
  assert.deepEqual((await Sandbox.list({ tags: { run: tag, role: "b" } })).map((s) => s.id), [b.id]);
  const again = await Sandbox.fromId(a.id);
  assert.equal(again.lastInfo.tags.run, tag);
  assert.equal((await again.run("echo $((6*7))")).stdout, "42\n");
});

test("setNetwork changes the policy; tunnel gives an exposed port's URL", async (t) => {
  const sb = await sandbox(t, { ports: [8080] });
  const url = await sb.tunnel(8080);
  assert.equal(url, `${URL}/proxy/${sb.id}/8080/`);
  assert.ok(sb.accessToken.length > 0);
  await assert.rejects(sb.tunnel(9999), NotFoundError);
  const info = await sb.setNetwork({ outboundDomainAllowlist: ["example.com"] });
  assert.deepEqual(info.network?.outbound_domain_allowlist, ["example.com"]);
  assert.equal((await sb.setNetwork({ blockNetwork: true })).network?.block_network, true);
});
