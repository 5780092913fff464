/** The filesystem of one sandbox, as `sb.files`: whole-file verbs on absolute sandbox paths. */
import type { Client } from "./client.js";
import { sandboxPath } from "./client.js";
import { NotFoundError, ServerError } from "./errors.js";
import type { FileInfo } from "./types.js";

/**
 * One change `files.watch()` saw: `type` is `create`, `modify`, `delete` or `rename` (then
 * `dest` is the new path), with `path` and `isDir`; or `overflow` (events came faster than
 * they were read: some were lost) or `limit` (part of a large tree is not watched), with
 * a `message` saying so.
 */
export interface FileEvent {
  type: string;
  path: string | undefined;
  dest: string | undefined;
  isDir: boolean;
  message: string | undefined;
}

/** A running watch: iterate it for events; `close()` ends it (so does leaving the loop). */
export interface FileWatch extends AsyncIterable<FileEvent> {
  close(): void;
}

function optStr(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

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

  /** Move `src` to `dst` (replacing a file there); returns what is now at `dst`. */
  async rename(src: string, dst: string): Promise<FileInfo> {
    return await this.#client.request<FileInfo>("POST", `${this.#path}/rename`, { json: { src, dst } });
  }

  /** Set the permission bits of `path` to `mode` (0 to 0o7777). */
  async chmod(path: string, mode: number): Promise<FileInfo> {
    return await this.#client.request<FileInfo>("POST", `${this.#path}/chmod`, { json: { path, mode } });
  }

  /**
   * Watch `path` (a file, a directory, or with `recursive` a whole tree). Resolves once the
   * watch is in place, so a change made after that is seen.
   *
   * @example
   * ```ts
   * const events = await sb.files.watch("/app", { recursive: true });
   * for await (const e of events) console.log(e.type, e.path);
   * ```
   */
  async watch(path: string, options: { recursive?: boolean } = {}): Promise<FileWatch> {
    const res = await this.#client.open("GET", `${this.#path}/watch`, {
      query: { path, recursive: options.recursive ? "true" : "false" },
      timeoutMs: null,
    });
    const events = this.#client.events(res, `GET ${this.#path}/watch`);
    return {
      close: () => res.destroy(),
      async *[Symbol.asyncIterator]() {
        for await (const event of events) {
          yield {
            type: String(event.type),
            path: optStr(event.path),
            dest: optStr(event.dest),
            isDir: event.dir === true,
            message: optStr(event.message),
          };
        }
      },
    };
  }

  /** A URL any HTTP client can `PUT` the file at `path` to, for `expires` seconds, without the key. */
  async uploadUrl(path: string, options: { expires?: number } = {}): Promise<string> {
    return this.#signed(
      await this.#client.request("POST", `${this.#path}/upload-url`, { json: { path, expires: options.expires ?? 3600 } }),
    );
  }

  /** A URL any HTTP client can `GET` the file at `path` from, for `expires` seconds, without the key. */
  async downloadUrl(path: string, options: { expires?: number } = {}): Promise<string> {
    return this.#signed(
      await this.#client.request("GET", `${this.#path}/download-url`, { query: { path, expires: options.expires ?? 3600 } }),
    );
  }

  #signed(data: unknown): string {
    // Joined to this client's base URL: the server's own idea of its address may be wrong
    // behind a proxy.
    const relative = (data as { path?: unknown } | null)?.path;
    if (typeof relative !== "string" || !relative.startsWith("/")) {
      throw new ServerError(`the server answered without a signed URL: ${JSON.stringify(data).slice(0, 200)}`);
    }
    return this.#client.url + relative;
  }

  /** Delete the file or directory at `path`; a non-empty directory needs `recursive: true`. */
  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.#client.request("DELETE", this.#path, {
      query: { path, recursive: options.recursive ? "true" : "false" },
    });
  }
}
