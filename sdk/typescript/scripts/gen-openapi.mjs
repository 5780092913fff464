// `npm run gen [-- FILE]`: regenerate src/generated/openapi.ts from the OpenAPI document of
// the server at $STOCKADE_URL (default http://127.0.0.1:7423), or from a saved FILE.
import { readFile, writeFile } from "node:fs/promises";
import { GENERATED, fetchSpec, typesFor } from "./openapi.mjs";

const file = process.argv[2];
const spec = file
  ? JSON.parse(await readFile(file, "utf8"))
  : await fetchSpec(process.env.STOCKADE_URL || "http://127.0.0.1:7423");
await writeFile(GENERATED, await typesFor(spec));
console.log(`wrote ${GENERATED.pathname}`);
