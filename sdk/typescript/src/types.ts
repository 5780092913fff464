/** The API's records, as generated from the server's OpenAPI document (snake_case, as on the wire). */
import type { components } from "./generated/openapi.js";

type Schemas = components["schemas"];

/** A sandbox as the server describes it (`GET /v1/sandboxes/{id}`). */
export type SandboxInfo = Schemas["SandboxOut"];
/** A file's metadata (`size` is in bytes). */
export type FileInfo = Schemas["FileInfoOut"];
/** A memory snapshot's record. */
export type SnapshotInfo = Schemas["SnapshotOut"];
/** An image's record. */
export type ImageInfo = Schemas["ImageOut"];
/** A code context's record. */
export type CodeContext = Schemas["ContextOut"];
/** The body of `POST /v1/sandboxes`. */
export type CreateSandboxBody = Partial<Schemas["CreateSandbox"]>;
/** The body of `PUT /v1/sandboxes/{id}/network`. */
export type NetworkBody = Partial<Schemas["NetworkIn"]>;
/** The body of `POST /v1/sandboxes/{id}/exec` as generated; see ExecRequest. */
export type ExecBody = Partial<Schemas["ExecRequest"]>;
/** The body of `POST /v1/sandboxes/{id}/code/run`. */
export type RunCodeBody = Partial<Schemas["RunCode"]>;
// openapi-typescript renders `argv` (prefixItems plus items) as a one-element tuple; the
// server takes any non-empty list.
export type ExecRequest = Omit<ExecBody, "argv"> & { argv: string[] };
