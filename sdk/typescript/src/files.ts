/** The filesystem of one sandbox, as `sb.files`: whole-file verbs on absolute sandbox paths. */
import type { Client } from "./client.js";
import { sandboxPath } from "./client.js";
import { NotFoundError } from "./errors.js";
import type { FileInfo } from "./types.js";

/**
 * @example
 * ```ts
 * await sb.files.write("/app/x.txt", "hello");
 * console.log(await sb.files.readText("/app/x.txt"));
 * for (const entry of await sb.files.list("/app")) console.log(entry.name, entry.size);
 * ```
 */
export class Files {
  readonly #client: Client;
  readonly #sandboxId: string;
  readonly #path: string;

  /** @internal */
  constructor(client: Client, sandboxId: string) {
    this.#client = client;
    this.#sandboxId = sandboxId;
    this.#path = sandboxPath(sandboxId, "/files");
  }

  /** Create or replace the file at `path` (parents are created); text is written as UTF-8. */
  async write(path: string, data: string | Uint8Array): Promise<FileInfo> {
    const body = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data);
    return await this.#client.request<FileInfo>("PUT", this.#path, { query: { path }, body, timeoutMs: null });
  }

  /** The contents of the file at `path`. */
  async read(path: string): Promise<Buffer> {
    const res = await this.#client.open("GET", this.#path, { query: { path }, timeoutMs: null });
    const parts: Buffer[] = [];
    for await (const chunk of res) parts.push(chunk as Buffer);
    return Buffer.concat(parts);
  }

  /** The contents of the file at `path` as UTF-8 text. */
  async readText(path: string): Promise<string> {
    return (await this.read(path)).toString("utf8");
  }

  /** The entries of the directory at `path`, sorted by name. */
  async list(path = "/"): Promise<FileInfo[]> {
    const data = await this.#client.request<{ entries: FileInfo[] }>("GET", `${this.#path}/list`, { query: { path } });
    return data.entries;
  }

  /** What is at `path` (a symlink itself, not its target). */
  async stat(path: string): Promise<FileInfo> {
    return await this.#client.request<FileInfo>("GET", `${this.#path}/stat`, { query: { path } });
  }

  /** Whether anything exists at `path`. A missing sandbox still throws NotFoundError. */
  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (exc) {
      if (!(exc instanceof NotFoundError)) throw exc;
    }
    // 404 for the path or for the sandbox? Only the first means "no".
    await this.#client.request("GET", sandboxPath(this.#sandboxId));
    return false;
  }

  /** Create the directory `path` (and missing parents unless `parents: false`). */
  async mkdir(path: string, options: { parents?: boolean } = {}): Promise<FileInfo> {
    return await this.#client.request<FileInfo>("POST", `${this.#path}/mkdir`, {
      json: { path, parents: options.parents ?? true },
    });
  }

  /** Delete the file or directory at `path`; a non-empty directory needs `recursive: true`. */
  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.#client.request("DELETE", this.#path, {
      query: { path, recursive: options.recursive ? "true" : "false" },
    });
  }
}
