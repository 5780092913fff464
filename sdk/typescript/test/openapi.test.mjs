// The committed types must be what openapi-typescript makes of the live server's spec.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { GENERATED, fetchSpec, typesFor } from "../scripts/openapi.mjs";
import { URL } from "./helpers.mjs";

test("src/generated/openapi.ts matches the server's /openapi.json", async () => {
  const live = await typesFor(await fetchSpec(URL));
  const committed = await readFile(GENERATED, "utf8");
  if (live !== committed) {
    const a = committed.split("\n");
    const b = live.split("\n");
    let i = 0;
    while (i < a.length && a[i] === b[i]) i++;
    assert.fail(
      `src/generated/openapi.ts is stale: it differs from the server's /openapi.json from line ${i + 1} ` +
        `(committed: ${JSON.stringify(a[i])}, live: ${JSON.stringify(b[i])}); regenerate it with ` +
        "`make ts-types` (or `npm run gen` with STOCKADE_URL pointing at a server of this checkout) and commit it",
    );
  }
});
