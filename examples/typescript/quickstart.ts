// Stockade from TypeScript: create a sandbox, run a command, stream an exec, move files.
//
//   (cd ../../sdk/typescript && npm ci && npm run build)   # the SDK from this checkout
//   export STOCKADE_URL=http://127.0.0.1:7423 STOCKADE_TOKEN=...
//   npm install && npx tsc -p . && node dist/quickstart.js
import { Sandbox, SandboxTerminatedError } from "@stockade/sdk";

const sb = await Sandbox.create({ image: "python", timeout: 120, tags: { example: "quickstart" } });
try {
  // run(): a shell line to completion; a non-zero exit is data, not an error.
  const r = await sb.run("python3 -c 'print(6 * 7)'; exit 3");
  console.log(`run: ${r.stdout.trim()}, exit code ${r.exitCode}`);

  // exec(): output streams as it is produced; stdin is written while it runs.
  const p = await sb.exec(["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done; cat >&2"]);
  await p.stdin.write("to stderr\n");
  await p.stdin.close();
  for await (const line of p.stdout) console.log(`streamed: ${line.trimEnd()}`);
  console.log(`stderr: ${(await p.stderr.text()).trim()}, exit code ${await p.wait()}`);

  // files: whole-file verbs on absolute paths.
  await sb.files.write("/app/hello.txt", "hello");
  console.log(`read back: ${await sb.files.readText("/app/hello.txt")}`);
  console.log(`listing: ${(await sb.files.list("/app")).map((e) => `${e.name} (${e.size} B)`).join(", ")}`);
} finally {
  await sb.terminate();
}

// A terminated sandbox answers with a typed error.
await sb.run("true").catch((exc: unknown) => {
  if (!(exc instanceof SandboxTerminatedError)) throw exc;
  console.log(`after terminate: ${exc.code} (${exc.status})`);
});
