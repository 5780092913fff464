/**
 * The connection to one Stockade server: HTTP requests, NDJSON streams and WebSockets, with
 * every transport failure translated into a {@link StockadeError} here and nowhere else.
 *
 * A Client holds a keep-alive connection pool; it may be shared by any number of sandboxes
 * and concurrent calls. `close()` drops its idle connections (a process exits without it).
 */
import * as http from "node:http";
import * as https from "node:https";
import WebSocket from "ws";
import { resolveCa, resolveToken, resolveUrl, CA_BUNDLE_ENV } from "./config.js";
import {
  InvalidArgumentError,
  RateLimitedError,
  ServerError,
  StockadeConnectionError,
  StockadeError,
  StockadeTimeoutError,
  errorFromBody,
  retryAfterSeconds,
} from "./errors.js";
import { VERSION } from "./version.js";

export interface ClientOptions {
  /** The server's base URL; default `$STOCKADE_URL`, else `http://127.0.0.1:7423`. */
  url?: string;
  /** The bearer token; default `$STOCKADE_TOKEN`, else the local server's token file. */
  token?: string;
  /** A PEM file (or directory) of CAs to trust as well; default `$STOCKADE_CA_BUNDLE`. */
  caBundle?: string;
}

/** Where a call finds its client: a ready one, or the options to make one. */
export interface Connection {
  client?: Client;
  url?: string;
  token?: string;
}

export type Query = Record<string, string | number | boolean | string[] | undefined | null>;

export interface RequestOptions {
  query?: Query;
  json?: unknown;
  body?: Buffer | Uint8Array | string;
  /** Milliseconds without an answer before giving up; null: wait as long as it takes. */
  timeoutMs?: number | null;
}

/** How long a plain call may go without an answer; long ones (create, pause) have none. */
export const DEFAULT_TIMEOUT_MS = 60_000;
const CONNECT_TIMEOUT_MS = 10_000;
// Bounds on what the server (or whatever answers in its place) can make this process hold.
const MAX_JSON_BYTES = 64 * 1024 * 1024;
const MAX_ERROR_BYTES = 64 * 1024;
const MAX_LINE_BYTES = 16 * 1024 * 1024;

function userAgent(): string {
  return `stockade-typescript/${VERSION}`;
}

/** A bounded read of a whole response body. */
async function readBody(res: http.IncomingMessage, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      res.destroy();
      throw new ServerError(`the server sent ${what} larger than ${limit} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** The typed error for an error answer with body `content`. */
export function errorForResponse(
  status: number,
  content: Buffer,
  headers: http.IncomingHttpHeaders = {},
): StockadeError {
  let body: unknown;
  const text = content.toString("utf8");
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = text.slice(0, 500);
  }
  const error = errorFromBody(status, body);
  if (error instanceof RateLimitedError) {
    const value = headers["retry-after"];
    error.retryAfter = retryAfterSeconds(Array.isArray(value) ? value[0] : value);
  }
  return error;
}

const TLS_UNTRUSTED = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
]);

/** Translate a socket/TLS failure into the Stockade error for it; `action` names the step. */
export function transportError(exc: unknown, url: string, action: string): StockadeError {
  if (exc instanceof StockadeError) return exc;
  const code = (exc as NodeJS.ErrnoException | undefined)?.code ?? "";
  const detail = exc instanceof Error ? exc.message : String(exc);
  if (TLS_UNTRUSTED.has(code)) {
    return new StockadeConnectionError(
      `${action}: the certificate of the Stockade server at ${url} is not trusted (${detail}); ` +
        `set ${CA_BUNDLE_ENV} to the server's certificate (\`stockade serve --tls-self-signed\` ` +
        "prints its path) or to the CA that signed it, or pass {caBundle}",
      { cause: exc },
    );
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    return new StockadeConnectionError(
      `${action}: the certificate of the Stockade server at ${url} is not valid for this name ` +
        `(${detail}); connect by a name it covers`,
      { cause: exc },
    );
  }
  if (code === "ECONNRESET" && url.startsWith("http://")) {
    return new StockadeConnectionError(
      `${action}: the server at ${url} hung up (${detail}); if it serves HTTPS, use an ` +
        "https:// URL, else see its log",
      { cause: exc },
    );
  }
  return new StockadeConnectionError(
    `${action}: could not reach the Stockade server at ${url} (${detail || code}); start it ` +
      "with `stockade serve` (or `make run` in a checkout), or point STOCKADE_URL at it",
    { cause: exc },
  );
}

/**
 * A connection to a Stockade server.
 *
 * @example
 * ```ts
 * const client = new Client({ url: "https://stockade.example", token: process.env.KEY });
 * const sb = await Sandbox.create({ image: "python", client });
 * ```
 */
export class Client {
  readonly url: string;
  readonly token: string;
  readonly #ca: string[] | undefined;
  readonly #agent: http.Agent;

  constructor(options: ClientOptions = {}) {
    this.url = resolveUrl(options.url);
    this.token = resolveToken(options.token, this.url);
    this.#ca = this.url.startsWith("https:") ? resolveCa(options.caBundle) : undefined;
    this.#agent = this.url.startsWith("https:")
      ? new https.Agent({ keepAlive: true, ...(this.#ca ? { ca: this.#ca } : {}) })
      : new http.Agent({ keepAlive: true });
  }

  /** Drop the idle connections; calls already running finish. */
  close(): void {
    this.#agent.destroy();
  }

  get #headers(): Record<string, string> {
    return { Authorization: `Bearer ${this.token}`, "User-Agent": userAgent() };
  }

  #target(path: string, query?: Query): URL {
    const url = new URL(this.url + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value === undefined || value === null) continue;
      for (const item of Array.isArray(value) ? value : [value]) {
        url.searchParams.append(key, String(item));
      }
    }
    return url;
  }

  /** Send a request; resolves with the response once its status is a success. */
  async open(method: string, path: string, options: RequestOptions = {}): Promise<http.IncomingMessage> {
    const action = `${method} ${path}`;
    const target = this.#target(path, options.query);
    const headers = this.#headers;
    let payload: Buffer | undefined;
    if (options.json !== undefined) {
      payload = Buffer.from(JSON.stringify(options.json));
      headers["Content-Type"] = "application/json";
    } else if (options.body !== undefined) {
      payload = Buffer.from(options.body);
      headers["Content-Type"] = "application/octet-stream";
    }
    if (payload !== undefined) headers["Content-Length"] = String(payload.length);
    const timeoutMs = options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs;
    const lib = target.protocol === "https:" ? https : http;
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = lib.request(target, { method, headers, agent: this.#agent });
      // Connecting always times out; waiting for the answer only when the call has a limit.
      const connectTimer = setTimeout(() => {
        req.destroy(
          new StockadeTimeoutError(
            `${action}: timed out connecting to the Stockade server at ${this.url}; ` +
              "check that it is running and reachable",
          ),
        );
      }, CONNECT_TIMEOUT_MS);
      req.on("socket", (socket) => {
        const connected = () => {
          clearTimeout(connectTimer);
          if (timeoutMs !== null) {
            req.setTimeout(timeoutMs, () =>
              req.destroy(
                new StockadeTimeoutError(
                  `${action}: timed out waiting for an answer from the Stockade server at ` +
                    `${this.url}; check that it is running and reachable`,
                ),
              ),
            );
          }
        };
        if ((socket as { connecting?: boolean }).connecting) socket.once("connect", connected);
        else connected();
      });
      req.on("response", (answer) => {
        clearTimeout(connectTimer);
        // The answer has come: its body streams for as long as it takes.
        req.setTimeout(0);
        resolve(answer);
      });
      req.on("error", (exc) => {
        clearTimeout(connectTimer);
        reject(transportError(exc, this.url, action));
      });
      req.end(payload);
    });
    const status = res.statusCode ?? 0;
    if (status >= 400) {
      const content = await readBody(res, MAX_ERROR_BYTES, "an error body").catch(() => Buffer.alloc(0));
      throw errorForResponse(status, content, res.headers);
    }
    return res;
  }

  /** A request answered with JSON (or nothing, for a 204). */
  async request<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const res = await this.open(method, path, options);
    let content: Buffer;
    try {
      content = await readBody(res, MAX_JSON_BYTES, "an answer");
    } catch (exc) {
      throw transportError(exc, this.url, `${method} ${path}`);
    }
    if (res.statusCode === 204 || content.length === 0) return undefined as T;
    try {
      return JSON.parse(content.toString("utf8")) as T;
    } catch {
      throw new ServerError(
        `${method} ${path}: the server sent malformed JSON: ${content.toString("utf8").slice(0, 200)}`,
      );
    }
  }

  /** A request answered with newline-delimited JSON: yields each event object as it comes. */
  async *ndjson(
    method: string,
    path: string,
    options: RequestOptions = {},
  ): AsyncGenerator<Record<string, unknown>> {
    const res = await this.open(method, path, { ...options, timeoutMs: null });
    yield* this.events(res, `${method} ${path}`);
  }

  /** @internal The NDJSON events of an open response; leaving early closes it. */
  async *events(res: http.IncomingMessage, action: string): AsyncGenerator<Record<string, unknown>> {
    let pending: Buffer = Buffer.alloc(0);
    try {
      for await (const chunk of res) {
        pending = pending.length ? Buffer.concat([pending, chunk as Buffer]) : (chunk as Buffer);
        let newline: number;
        while ((newline = pending.indexOf(10)) >= 0) {
          const line = pending.subarray(0, newline).toString("utf8").trim();
          pending = pending.subarray(newline + 1);
          if (line) yield decodeEvent(line);
        }
        if (pending.length > MAX_LINE_BYTES) {
          throw new ServerError(`the server sent an event line over ${MAX_LINE_BYTES} bytes`);
        }
      }
    } catch (exc) {
      throw transportError(exc, this.url, action);
    } finally {
      // Leaving early (the exit event came, or the caller broke off) closes the stream.
      res.destroy();
    }
    const rest = pending.toString("utf8").trim();
    if (rest) yield decodeEvent(rest);
  }

  /**
   * @internal Open a WebSocket to `path`; an HTTP refusal becomes its typed error. Kept
   * out of the published types, so that users need no `ws` types to compile.
   */
  async connectWs(path: string): Promise<WebSocket> {
    const target = this.url.replace(/^http/, "ws") + path;
    const action = `GET ${path} (WebSocket)`;
    const ws = new WebSocket(target, {
      headers: this.#headers,
      perMessageDeflate: false,
      maxPayload: MAX_LINE_BYTES,
      handshakeTimeout: CONNECT_TIMEOUT_MS,
      ...(this.#ca ? { ca: this.#ca } : {}),
    });
    return await new Promise<WebSocket>((resolve, reject) => {
      ws.once("open", () => {
        ws.removeAllListeners("error");
        resolve(ws);
      });
      ws.once("unexpected-response", (_req, res) => {
        readBody(res, MAX_ERROR_BYTES, "an error body")
          .catch(() => Buffer.alloc(0))
          .then((content) => reject(errorForResponse(res.statusCode ?? 0, content, res.headers)));
      });
      ws.once("error", (exc) => reject(transportError(exc, this.url, action)));
    });
  }
}

function decodeEvent(line: string): Record<string, unknown> {
  let event: unknown;
  try {
    event = JSON.parse(line);
  } catch {
    event = undefined;
  }
  if (event === null || typeof event !== "object" || typeof (event as { type?: unknown }).type !== "string") {
    throw new ServerError(`the server sent a malformed event: ${JSON.stringify(line.slice(0, 200))}`);
  }
  return event as Record<string, unknown>;
}

let defaultClient: Client | undefined;

/** The client a call should use: the one given, one for the url/token given, or the default. */
export function clientFor(connection: Connection = {}): Client {
  if (connection.client) return connection.client;
  if (connection.url !== undefined || connection.token !== undefined) {
    return new Client({ url: connection.url, token: connection.token });
  }
  defaultClient ??= new Client();
  return defaultClient;
}

/** `/v1/sandboxes/{id}{suffix}` with the ID escaped. */
export function sandboxPath(sandboxId: string, suffix = ""): string {
  if (typeof sandboxId !== "string" || !sandboxId) {
    throw new InvalidArgumentError(`a sandbox ID is a string like 'sb-…', got ${JSON.stringify(sandboxId)}`);
  }
  return `/v1/sandboxes/${encodeURIComponent(sandboxId)}${suffix}`;
}
