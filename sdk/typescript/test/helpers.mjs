// Shared by the tests: every test talks to the real server at $STOCKADE_URL.
import { Sandbox } from "../dist/index.js";

export const URL = process.env.STOCKADE_URL;
export const TOKEN = process.env.STOCKADE_TOKEN;
if (!URL || !TOKEN) {
  throw new Error("set STOCKADE_URL and STOCKADE_TOKEN to a running Stockade server (see tests/integration/test_typescript_sdk.py)");
}

/** A debian sandbox, terminated when the test ends. */
export async function sandbox(t, options = {}) {
  const sb = await Sandbox.create({ image: "debian", timeout: 300, tags: { suite: "typescript" }, ...options });
  t.after(() => sb.terminate());
  return sb;
}
