// Every server error code maps to the class the Python SDK maps it to. The wrapper
// (tests/integration/test_typescript_sdk.py) passes Python's table as STOCKADE_PY_ERROR_CODES.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as sdk from "../dist/index.js";

const table = process.env.STOCKADE_PY_ERROR_CODES;

test("error codes map to the classes the Python SDK uses", { skip: table ? false : "STOCKADE_PY_ERROR_CODES unset" }, () => {
  const codes = JSON.parse(table);
  assert.ok(Object.keys(codes).length >= 20);
  for (const [code, [name, status, bases]] of Object.entries(codes)) {
    const error = sdk.errorFromBody(status, { error: { code, message: `m-${code}` } });
    assert.equal(error.constructor.name, name, `code ${code}`);
    assert.equal(error.code, code);
    assert.equal(error.status, status);
    assert.equal(error.message, `m-${code}`);
    for (const base of bases) assert.ok(error instanceof sdk[base], `${name} is a ${base}`);
  }
});

test("an unknown code falls back to its status's class; a proxy's page keeps its text", () => {
  assert.ok(sdk.errorFromBody(404, { error: { code: "brand_new", message: "x" } }) instanceof sdk.NotFoundError);
  const page = sdk.errorFromBody(502, "<html>Bad Gateway</html>");
  assert.ok(page instanceof sdk.ServerError);
  assert.match(page.message, /Bad Gateway/);
  assert.equal(sdk.errorFromBody(429, { error: { code: "rate_limited", message: "slow" } }).constructor, sdk.RateLimitedError);
});
