// The TypeScript half of bench/typescript.py: a long-lived worker, so that the figures
// interleave run by run with the Python SDK's and node's start-up is never timed. Reads one
// request per stdin line and answers one JSON line each, {"seconds": ...}:
//   exec SANDBOX_ID   exec `true` over the WebSocket and wait for its exit
//   create IMAGE      create a sandbox, exec `echo hi` until its first line (the sandbox is
//                     terminated after the timing)
import { createInterface } from "node:readline";
import { Sandbox } from "../dist/index.js";

const sandboxes = new Map();

async function execOnce(id) {
  let sb = sandboxes.get(id);
  if (sb === undefined) {
    sb = await Sandbox.fromId(id);
    sandboxes.set(id, sb);
  }
  const t0 = performance.now();
  const p = await sb.exec(["true"]);
  await p.wait();
  return (performance.now() - t0) / 1000;
}

async function createOnce(image) {
  const t0 = performance.now();
  const sb = await Sandbox.create({ image, timeout: 120 });
  const p = await sb.exec(["echo", "hi"]);
  const { value } = await p.stdout[Symbol.asyncIterator]().next();
  if (value !== "hi\n") throw new Error(`unexpected first output ${JSON.stringify(value)}`);
  await p.wait();
  const seconds = (performance.now() - t0) / 1000;
  await sb.terminate();
  return seconds;
}

for await (const line of createInterface({ input: process.stdin })) {
  const [what, arg] = line.trim().split(/\s+/);
  try {
    const seconds = what === "exec" ? await execOnce(arg) : await createOnce(arg);
    process.stdout.write(`${JSON.stringify({ seconds })}\n`);
  } catch (exc) {
    process.stdout.write(`${JSON.stringify({ error: String(exc?.stack ?? exc) })}\n`);
  }
}
