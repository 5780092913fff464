import assert from "node:assert/strict";
import { test } from "node:test";
import { KernelUnavailableError } from "../dist/index.js";
import { sandbox } from "./helpers.mjs";

test("runCode returns printed text, results and errors as data, and keeps state", async (t) => {
  const sb = await sandbox(t, { image: "code-interpreter", memory: 1024 });
  const printed = [];
  const first = await sb.runCode("x = 6\nprint('hi')\nx * 7", { onStdout: (s) => printed.push(s) });
  assert.deepEqual(first.logs.stdout, ["hi\n"]);
  assert.deepEqual(printed, ["hi\n"]);
  assert.equal(first.text, "42");
  assert.equal(first.error, undefined);
  assert.ok(first.results[0].isMainResult);
  assert.deepEqual(first.results[0].formats(), ["text"]);
  assert.equal(typeof first.executionCount, "number");

  const html = await sb.runCode("from IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))\nx");
  assert.equal(html.results[0].html, "<b>x</b>");
  assert.equal(html.text, "6");

  const failed = await sb.runCode("1 / 0");
  assert.equal(failed.error?.name, "ZeroDivisionError");
  assert.match(failed.error?.value ?? "", /division by zero/);

  const bash = await sb.runCode("echo $((1+2))", { language: "bash" });
  assert.deepEqual(bash.logs.stdout.join(""), "3\n");
});

test("runCode on an image without a kernel is a KernelUnavailableError", async (t) => {
  const sb = await sandbox(t);
  await assert.rejects(sb.runCode("1"), (exc) => exc instanceof KernelUnavailableError && exc.status === 409);
});
