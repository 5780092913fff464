/**
 * Stockade's TypeScript SDK: gVisor sandboxes for untrusted code, on your own server.
 *
 * @example
 * ```ts
 * import { Sandbox } from "@stockade/sdk";
 *
 * const sb = await Sandbox.create({ image: "python" });
 * console.log((await sb.run("echo hi")).stdout);
 * await sb.terminate();
 * ```
 */
export { Client, type ClientOptions, type Connection } from "./client.js";
export { Execution, Result, type ExecutionError, type CodeCallbacks } from "./code.js";
export { CommandError, CommandResult, CommandTimeoutError } from "./commands.js";
export * from "./errors.js";
export { Files, type FileEvent, type FileWatch } from "./files.js";
export { Image } from "./image.js";
export { OutputStream, Process, StdinWriter, type ExecOptions } from "./process.js";
export {
  Sandbox,
  type CreateOptions,
  type NetworkOptions,
  type RestoreOptions,
  type RunCodeOptions,
  type RunOptions,
} from "./sandbox.js";
export { Snapshot } from "./snapshot.js";
export type { CodeContext, FileInfo, ImageInfo, SandboxInfo, SnapshotInfo } from "./types.js";
export type { components, paths } from "./generated/openapi.js";
export { VERSION } from "./version.js";
