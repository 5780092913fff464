import assert from "node:assert/strict";
import { test } from "node:test";
import { Snapshot } from "../dist/index.js";
import { sandbox } from "./helpers.mjs";

test("snapshot restores and fork copies a sandbox's memory and files", async (t) => {
  const sb = await sandbox(t, { image: "python" });
  // A process's memory carries over: the counter lives only in the Python process.
  await sb.files.write("/tmp/state.txt", "before");
  await sb.run("nohup python3 -c 'import time\nn=0\nwhile True:\n  n+=1; open(\"/tmp/alive\",\"w\").write(str(n)); time.sleep(0.05)' >/dev/null 2>&1 &");
  await sb.run("while [ ! -s /tmp/alive ]; do sleep 0.05; done");
  const snap = await sb.snapshot();
  assert.match(snap.id, /^sn-/);
  t.after(() => snap.delete());
  assert.ok((await Snapshot.list({ sandboxId: sb.id })).some((s) => s.id === snap.id));
  await sb.files.write("/tmp/state.txt", "after");

  const restored = await snap.restore({ timeout: 120 });
  t.after(() => restored.terminate());
  assert.notEqual(restored.id, sb.id);
  assert.equal(await restored.files.readText("/tmp/state.txt"), "before");
  const ticks = async (s) => Number((await s.run("cat /tmp/alive")).stdout);
  const first = await ticks(restored);
  await new Promise((r) => setTimeout(r, 300));
  assert.ok((await ticks(restored)) > first, "the restored process keeps running");

  const [a, b] = await sb.fork(2);
  t.after(() => Promise.all([a.terminate(), b.terminate()]));
  await a.files.write("/tmp/state.txt", "only a");
  assert.equal(await b.files.readText("/tmp/state.txt"), "after");
  assert.equal(await a.files.readText("/tmp/state.txt"), "only a");
  assert.equal(await sb.files.readText("/tmp/state.txt"), "after");
});

test("pause and resume keep the sandbox's files and processes", async (t) => {
  const sb = await sandbox(t);
  await sb.files.write("/tmp/kept.txt", "kept");
  await sb.run("nohup sleep 600 >/dev/null 2>&1 &");
  const paused = await sb.pause();
  assert.equal(paused.status, "paused");
  await assert.rejects(sb.run("true"), (exc) => exc.code === "sandbox_paused" && exc.status === 409);
  const resumed = await sb.resume();
  assert.equal(resumed.status, "running");
  assert.equal(await sb.files.readText("/tmp/kept.txt"), "kept");
  assert.equal((await sb.run("cat /proc/[0-9]*/comm | grep -cx sleep")).stdout, "1\n");
});
