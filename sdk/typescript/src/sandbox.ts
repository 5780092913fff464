/** The handle to one sandbox: create, find, exec, run, run code, files, snapshots, terminate. */
import type { Client, Connection } from "./client.js";
import { clientFor, sandboxPath } from "./client.js";
import { ExecutionBuilder, type CodeCallbacks, type Execution } from "./code.js";
import { CommandResult, CommandTimeoutError, checkedArgv, commandArgv, describe } from "./commands.js";
import { InvalidArgumentError, NotFoundError, errorFromBody } from "./errors.js";
import { Files } from "./files.js";
import { Image } from "./image.js";
import { Process, cutShort, type ExecOptions } from "./process.js";
import { Snapshot, _registerSandbox } from "./snapshot.js";
import type { CodeContext, CreateSandboxBody, ExecRequest, ImageInfo, SandboxInfo, SnapshotInfo } from "./types.js";

export interface NetworkOptions {
  /** Loopback only. */
  blockNetwork?: boolean;
  /** Only these IPv4 CIDRs. */
  outboundCidrAllowlist?: string[];
  /** Only these names (`"example.com"`, `"*.example.org"`). */
  outboundDomainAllowlist?: string[];
}

export interface RestoreOptions {
  /** Seconds the sandbox lives (1–86400; default 300). */
  timeout?: number;
  tags?: Record<string, string>;
  /** Seconds without activity before it ends (or pauses). */
  idleTimeout?: number;
  /** What the limits do: `"terminate"` (default) or `"pause"`. */
  onTimeout?: "terminate" | "pause";
  /** A paused sandbox wakes by itself on its next exec, files call or port request. */
  autoResume?: boolean;
}

export interface CreateOptions extends RestoreOptions, NetworkOptions, Connection {
  /** An image's name or an {@link Image}; default `"python"`. */
  image?: string | Image;
  /** CPU cores (fractional allowed); default 1. */
  cpu?: number;
  /** MiB of memory; default 512. */
  memory?: number;
  /** MiB of disk; default 1024. */
  disk?: number;
  env?: Record<string, string>;
  workdir?: string;
  /** The sandbox's main process: an argv array, or a string run by `sh -c`. */
  entrypoint?: string | string[];
  /** Run the image's Entrypoint + Cmd as the main process, as `docker run` would. */
  imageEntrypoint?: boolean;
  /** Ports to expose: `[8080]` or `[{port: 8080, public: true}]`. */
  ports?: Array<number | { port: number; public?: boolean }>;
  /** Volumes to mount: `{"/data": "vol-…"}` (an ID or a name). */
  volumes?: Record<string, string>;
  /** A memory snapshot (or its ID) to restore instead of booting the image. */
  snapshot?: string | Snapshot;
}

export interface RunOptions {
  /** Written to the command's stdin, then closed. */
  stdin?: string | Uint8Array;
  env?: Record<string, string>;
  workdir?: string;
  /** Seconds: past it the command is killed and run() throws CommandTimeoutError. */
  timeout?: number;
  /** Throw CommandError for a non-zero exit. */
  check?: boolean;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
}

export interface RunCodeOptions extends CodeCallbacks {
  /** `"python"` (default) or `"bash"`. */
  language?: string;
  /** A code context or its ID; default the sandbox's default context for the language. */
  context?: CodeContext | string;
  /** Seconds: past it the code is interrupted (`error.name === "KeyboardInterrupt"`). */
  timeout?: number;
}

function networkBody(options: NetworkOptions): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (options.blockNetwork) body.block_network = true;
  for (const [key, value] of [
    ["outbound_cidr_allowlist", options.outboundCidrAllowlist],
    ["outbound_domain_allowlist", options.outboundDomainAllowlist],
  ] as const) {
    if (value === undefined) continue;
    if (!Array.isArray(value)) {
      // A lone string would otherwise go out as something the server rejects less clearly.
      throw new InvalidArgumentError(`${key} must be an array of strings, e.g. [${JSON.stringify(value)}]`);
    }
    body[key] = [...value];
  }
  return body;
}

/** The body of `POST /v1/sandboxes`; unset values are left to the server's defaults. */
export function createBody(options: CreateOptions): CreateSandboxBody {
  const image = options.image ?? "python";
  const body: Record<string, unknown> = {
    image: typeof image === "string" ? image : image.name,
    ...networkBody(options),
  };
  const optional: Record<string, unknown> = {
    cpu: options.cpu,
    memory: options.memory,
    disk: options.disk,
    timeout: options.timeout,
    workdir: options.workdir,
    idle_timeout: options.idleTimeout,
    on_timeout: options.onTimeout,
  };
  for (const [key, value] of Object.entries(optional)) if (value !== undefined) body[key] = value;
  if (options.env && Object.keys(options.env).length) body.env = { ...options.env };
  if (options.tags && Object.keys(options.tags).length) body.tags = { ...options.tags };
  if (options.entrypoint !== undefined) body.entrypoint = commandArgv(options.entrypoint);
  if (options.imageEntrypoint) body.image_entrypoint = true;
  if (options.ports?.length) body.ports = options.ports.map((p) => (typeof p === "number" ? p : { ...p }));
  if (options.volumes && Object.keys(options.volumes).length) body.volumes = { ...options.volumes };
  if (options.autoResume) body.auto_resume = true;
  if (options.snapshot !== undefined) {
    body.snapshot = typeof options.snapshot === "string" ? options.snapshot : options.snapshot.id;
  }
  return body as CreateSandboxBody;
}

/** The URL of an exposed port: host-based when the server has a domain for them. */
function portUrl(baseUrl: string, info: SandboxInfo, port: number): string {
  const exposed = info.ports.find((p) => p.port === port);
  if (exposed === undefined) {
    const listed = info.ports.map((p) => p.port).join(", ") || "none";
    throw new NotFoundError(
      `port ${port} of sandbox ${info.id} is not exposed (exposed: ${listed}); ` +
        "create the sandbox with {ports: [...]} or call sb.expose(port)",
    );
  }
  if (exposed.host) return `${baseUrl.startsWith("https") ? "https" : "http"}://${exposed.host}/`;
  return baseUrl.replace(/\/+$/, "") + exposed.path;
}

function contextId(context: CodeContext | string): string {
  const id = typeof context === "string" ? context : context.id;
  if (!id) throw new InvalidArgumentError("a code context is a CodeContext or its ID ('ctx-…')");
  return id;
}

/**
 * A gVisor sandbox on a Stockade server. Get one with {@link Sandbox.create},
 * {@link Sandbox.fromId} or {@link Sandbox.list}. `lastInfo` is the record as the server
 * last described it to this handle; `info()` fetches a fresh one.
 *
 * @example
 * ```ts
 * import { Sandbox } from "@stockade/sdk";
 *
 * const sb = await Sandbox.create({ image: "python", timeout: 120 });
 * try {
 *   const r = await sb.run("python3 -c 'print(6*7)'");
 *   console.log(r.stdout, r.exitCode);
 * } finally {
 *   await sb.terminate();
 * }
 * ```
 */
export class Sandbox {
  readonly id: string;
  readonly client: Client;
  readonly files: Files;
  lastInfo: SandboxInfo;

  constructor(info: SandboxInfo, client: Client) {
    this.id = info.id;
    this.lastInfo = info;
    this.client = client;
    this.files = new Files(client, info.id);
  }

  // -- finding sandboxes ------------------------------------------------------------------

  /**
   * Start a new sandbox and resolve once it runs. Unset values take the server's defaults
   * (1 CPU, 512 MiB memory, 1024 MiB disk, a 300 s `timeout`); times are in seconds.
   */
  static async create(options: CreateOptions = {}): Promise<Sandbox> {
    const client = clientFor(options);
    const info = await client.request<SandboxInfo>("POST", "/v1/sandboxes", {
      json: createBody(options),
      timeoutMs: null, // a create may build its image first
    });
    return new Sandbox(info, client);
  }

  /** The sandbox with ID `id`; throws NotFoundError. */
  static async fromId(id: string, connection: Connection = {}): Promise<Sandbox> {
    const client = clientFor(connection);
    return new Sandbox(await client.request<SandboxInfo>("GET", sandboxPath(id)), client);
  }

  /** Sandboxes with all of `tags` (and `status`, if given), newest first. */
  static async list(
    options: Connection & { tags?: Record<string, string>; status?: SandboxInfo["status"] } = {},
  ): Promise<Sandbox[]> {
    const client = clientFor(options);
    const data = await client.request<{ sandboxes: SandboxInfo[] }>("GET", "/v1/sandboxes", {
      query: {
        status: options.status,
        tag: Object.entries(options.tags ?? {}).map(([k, v]) => `${k}=${v}`),
      },
    });
    return data.sandboxes.map((info) => new Sandbox(info, client));
  }

  // -- state --------------------------------------------------------------------------------

  /** The sandbox's current record, fresh from the server. */
  async info(): Promise<SandboxInfo> {
    this.lastInfo = await this.client.request<SandboxInfo>("GET", sandboxPath(this.id));
    return this.lastInfo;
  }

  /** Stop the sandbox and discard it; terminating an ended sandbox is fine. */
  async terminate(): Promise<SandboxInfo> {
    this.lastInfo = await this.client.request<SandboxInfo>("DELETE", sandboxPath(this.id));
    return this.lastInfo;
  }

  /** End the sandbox `seconds` from now (1–86400), sooner or later than it would have. */
  async setTimeout(seconds: number): Promise<SandboxInfo> {
    this.lastInfo = await this.client.request<SandboxInfo>("POST", sandboxPath(this.id, "/timeout"), {
      json: { timeout: seconds },
    });
    return this.lastInfo;
  }

  // -- snapshots, pause and fork ------------------------------------------------------------

  /** Capture memory, processes and files while the sandbox keeps running. */
  async snapshot(options: { name?: string } = {}): Promise<Snapshot> {
    const info = await this.client.request<SnapshotInfo>("POST", sandboxPath(this.id, "/snapshots"), {
      json: { name: options.name ?? null },
      timeoutMs: null,
    });
    return new Snapshot(info, this.client);
  }

  /** Save the sandbox's files as a new image; new sandboxes from it see exactly those files. */
  async snapshotFilesystem(options: { name?: string } = {}): Promise<Image> {
    const info = await this.client.request<ImageInfo>("POST", sandboxPath(this.id, "/filesystem-snapshots"), {
      json: { name: options.name ?? null },
      timeoutMs: null,
    });
    return Image.fromName(info.name);
  }

  /** Save memory to disk and stop: nothing of it runs until `resume()`. */
  async pause(): Promise<SandboxInfo> {
    this.lastInfo = await this.client.request<SandboxInfo>("POST", sandboxPath(this.id, "/pause"), { timeoutMs: null });
    return this.lastInfo;
  }

  /** Bring a paused sandbox back: processes, memory, files and address. */
  async resume(): Promise<SandboxInfo> {
    this.lastInfo = await this.client.request<SandboxInfo>("POST", sandboxPath(this.id, "/resume"), { timeoutMs: null });
    return this.lastInfo;
  }

  /** `n` independent copies from one capture of this sandbox, which keeps running. */
  async fork(n = 1): Promise<Sandbox[]> {
    const data = await this.client.request<{ sandboxes: SandboxInfo[] }>("POST", sandboxPath(this.id, "/fork"), {
      json: { count: n },
      timeoutMs: null,
    });
    return data.sandboxes.map((info) => new Sandbox(info, this.client));
  }

  // -- network --------------------------------------------------------------------------------

  /** Replace the outbound policy; with no options the sandbox gets the default (public egress). */
  async setNetwork(options: NetworkOptions = {}): Promise<SandboxInfo> {
    this.lastInfo = await this.client.request<SandboxInfo>("PUT", sandboxPath(this.id, "/network"), {
      json: networkBody(options),
    });
    return this.lastInfo;
  }

  /** Expose `port` through the server's proxy and return its URL. */
  async expose(port: number, options: { public?: boolean } = {}): Promise<string> {
    this.lastInfo = await this.client.request<SandboxInfo>("POST", sandboxPath(this.id, "/ports"), {
      json: { port, public: options.public ?? false },
    });
    return portUrl(this.client.url, this.lastInfo, port);
  }

  /** Stop exposing `port`. */
  async unexpose(port: number): Promise<SandboxInfo> {
    this.lastInfo = await this.client.request<SandboxInfo>("DELETE", sandboxPath(this.id, `/ports/${port}`));
    return this.lastInfo;
  }

  /**
   * The URL of exposed `port`. Unless it is public, send {@link accessToken} with each
   * request (header `X-Stockade-Access-Token` or query `stockade_token`).
   */
  async tunnel(port: number): Promise<string> {
    if (!this.lastInfo.ports.some((p) => p.port === port)) await this.info();
    return portUrl(this.client.url, this.lastInfo, port);
  }

  /** Every exposed port and its URL. */
  async tunnels(): Promise<Map<number, string>> {
    const info = await this.info();
    return new Map(info.ports.map((p) => [p.port, portUrl(this.client.url, info, p.port)]));
  }

  /** The token that opens the sandbox's non-public exposed ports (and nothing else). */
  get accessToken(): string {
    return this.lastInfo.access_token ?? "";
  }

  // -- commands -------------------------------------------------------------------------------

  /**
   * Start `argv` (no shell: use `["sh", "-c", line]` for one) over a WebSocket and resolve
   * with its {@link Process} as soon as it runs.
   */
  async exec(argv: string[], options: ExecOptions = {}): Promise<Process> {
    return await Process._start(this.client, this.id, checkedArgv(argv), options);
  }

  /**
   * Run a command to completion: a shell line (run by `sh -c`) or an argv array. A non-zero
   * exit is returned, not thrown, unless `check: true`.
   */
  async run(command: string | string[], options: RunOptions = {}): Promise<CommandResult> {
    const argv = commandArgv(command);
    const body: ExecRequest = {
      argv,
      env: options.env ?? {},
      workdir: options.workdir ?? null,
      timeout: options.timeout ?? null,
    };
    if (typeof options.stdin === "string") body.stdin = options.stdin;
    else if (options.stdin !== undefined) body.stdin_b64 = Buffer.from(options.stdin).toString("base64");
    const output: Record<string, Buffer[]> = { stdout: [], stderr: [] };
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    const callbacks = { stdout: options.onStdout, stderr: options.onStderr };
    let exited: Record<string, unknown> | undefined;
    for await (const event of this.client.ndjson("POST", sandboxPath(this.id, "/exec"), { json: body })) {
      if (event.type === "stdout" || event.type === "stderr") {
        const data = Buffer.from(String(event.data ?? ""), "base64");
        output[event.type]?.push(data);
        callbacks[event.type]?.(decoders[event.type].decode(data, { stream: true }));
      } else if (event.type === "exit") {
        exited = event;
        break; // the last event: do not wait for the server to end the stream
      } else if (event.type === "error") {
        throw errorFromBody(undefined, { error: event.error });
      }
    }
    if (exited === undefined || typeof exited.exit_code !== "number") {
      throw await cutShort(this.client, this.id, `\`${describe(argv)}\``, "the server closed the stream");
    }
    const result = new CommandResult(
      argv,
      exited.exit_code,
      Buffer.concat(output.stdout ?? []),
      Buffer.concat(output.stderr ?? []),
      Boolean(exited.oom),
      this.id,
    );
    if (exited.timed_out) throw new CommandTimeoutError(argv, this.id, options.timeout, result);
    return options.check ? result.check() : result;
  }

  // -- code interpreter -------------------------------------------------------------------------

  /**
   * Run `code` in a stateful Jupyter kernel (the image needs one: `"code-interpreter"`) and
   * return what it printed, displayed and raised. An exception in the code is
   * `execution.error`, not a thrown error.
   */
  async runCode(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    if (typeof code !== "string") throw new InvalidArgumentError(`code must be a string, got ${typeof code}`);
    const context = options.context === undefined ? null : contextId(options.context);
    const body = {
      code,
      language: options.language ?? (context === null ? "python" : null),
      context,
      timeout: options.timeout ?? null,
    };
    const builder = new ExecutionBuilder(options);
    for await (const event of this.client.ndjson("POST", sandboxPath(this.id, "/code/run"), { json: body })) {
      if (builder.feed(event)) break;
    }
    if (!builder.ended) throw await cutShort(this.client, this.id, "the code run", "the server closed the stream");
    return builder.execution();
  }

  /** Start a new code context (its own kernel) for `language`, working in `workdir`. */
  async createCodeContext(language = "python", options: { workdir?: string } = {}): Promise<CodeContext> {
    const body: Record<string, unknown> = { language };
    if (options.workdir !== undefined) body.workdir = options.workdir;
    return await this.client.request<CodeContext>("POST", sandboxPath(this.id, "/code/contexts"), {
      json: body,
      timeoutMs: null,
    });
  }

  /** The sandbox's code contexts. */
  async listCodeContexts(): Promise<CodeContext[]> {
    const data = await this.client.request<{ contexts: CodeContext[] }>("GET", sandboxPath(this.id, "/code/contexts"));
    return data.contexts;
  }

  /** Replace the context's kernel with a fresh one (same ID, language and workdir). */
  async restartCodeContext(context: CodeContext | string): Promise<CodeContext> {
    const suffix = `/code/contexts/${encodeURIComponent(contextId(context))}/restart`;
    return await this.client.request<CodeContext>("POST", sandboxPath(this.id, suffix), { timeoutMs: null });
  }

  /** Stop the context's kernel and forget the context. */
  async removeCodeContext(context: CodeContext | string): Promise<void> {
    await this.client.request("DELETE", sandboxPath(this.id, `/code/contexts/${encodeURIComponent(contextId(context))}`));
  }

  // -- logs -----------------------------------------------------------------------------------------

  /** Everything the entrypoint printed so far (stdout and stderr interleaved). */
  async logs(): Promise<string> {
    const res = await this.client.open("GET", sandboxPath(this.id, "/logs"), { query: { follow: "false" } });
    const parts: Buffer[] = [];
    for await (const chunk of res) parts.push(chunk as Buffer);
    return Buffer.concat(parts).toString("utf8");
  }
}

_registerSandbox(Sandbox);
