/**
 * A command running in a sandbox over the exec WebSocket (`/v1/sandboxes/{id}/exec/ws`),
 * shaped like Python's `asyncio.subprocess.Process`: `stdout`/`stderr` async iterables,
 * `stdin.write()`/`stdin.close()`, `wait()`.
 *
 * Output is buffered per stream until read, so reading only stdout of a process that
 * writes much stderr never deadlocks. While nobody asks for anything (no reader, no
 * `wait()`) and more than {@link HIGH_WATER} bytes are buffered, the socket is paused, so
 * the server's flow control paces the process instead of this process's memory.
 */
import { constants } from "node:os";
import type WebSocket from "ws";
import type { Client } from "./client.js";
import { sandboxPath } from "./client.js";
import { CommandTimeoutError, describe } from "./commands.js";
import {
  InvalidArgumentError,
  SandboxTerminatedError,
  ServerError,
  StockadeConnectionError,
  StockadeError,
  errorFromBody,
} from "./errors.js";
import type { SandboxInfo } from "./types.js";

/** The first byte of a binary frame names its stream. */
const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
/** Stdin goes in frames of at most this, so signals and resizes interleave with a big write. */
const STDIN_CHUNK = 64 * 1024;
/** Buffered, unread output past which the socket pauses while nobody asks for more. */
export const HIGH_WATER = 1024 * 1024;

/** Why a sandbox is no longer running, with the fix when there is an obvious one. */
export function endedMessage(info: SandboxInfo): string {
  let text = `sandbox ${info.id} is ${info.status}`;
  if (info.reason) text += ` (reason: ${info.reason})`;
  if (info.message) text += `: ${info.message}`;
  if (info.reason === "timeout") text += "; pass a larger `timeout` to Sandbox.create() to keep it longer";
  if (info.reason === "oom") text += "; pass a larger `memory` to Sandbox.create()";
  return text;
}

/**
 * The error for a stream that ended without its exit event: the usual cause is the
 * sandbox ending, so ask the server and name that cause rather than a bare disconnect.
 */
export async function cutShort(client: Client, sandboxId: string, what: string, why: string): Promise<StockadeError> {
  let info: SandboxInfo;
  try {
    info = await client.request<SandboxInfo>("GET", sandboxPath(sandboxId));
  } catch (exc) {
    return new StockadeConnectionError(
      `the connection to ${what} in sandbox ${sandboxId} ended early (${why}), and checking the sandbox failed too: ${String(exc)}`,
    );
  }
  if (info.status !== "running") {
    return new SandboxTerminatedError(`${what} in sandbox ${sandboxId} was cut short: ${endedMessage(info)}`);
  }
  return new StockadeConnectionError(
    `the connection to ${what} in sandbox ${sandboxId} ended early (${why}); the command was killed with it`,
  );
}

/** `"TERM"`, `"sigterm"` or `15` as `"SIGTERM"`. */
export function signalName(sig: string | number): string {
  const signals = constants.signals as Record<string, number>;
  if (typeof sig === "number") {
    const name = Object.keys(signals).find((key) => signals[key] === sig);
    if (name === undefined) throw new InvalidArgumentError(`${sig} is not a signal number`);
    return name;
  }
  let name = sig.trim().toUpperCase();
  if (!name.startsWith("SIG")) name = `SIG${name}`;
  if (!(name in signals)) {
    throw new InvalidArgumentError(`unknown signal ${JSON.stringify(sig)}; use a name such as 'SIGTERM'`);
  }
  return name;
}

/**
 * The stdout or stderr of a {@link Process}. Iterating yields lines (each with its
 * newline); `text()` waits for everything; `chunks()` yields the raw bytes as they come.
 *
 * @example
 * ```ts
 * for await (const line of p.stdout) console.log(line.trimEnd());
 * ```
 */
export class OutputStream implements AsyncIterable<string> {
  readonly #process: Process;
  readonly #fd: number;

  /** @internal */
  constructor(process: Process, fd: number) {
    this.#process = process;
    this.#fd = fd;
  }

  /** The raw chunks, as they arrive, until the stream ends. */
  async *chunks(): AsyncGenerator<Buffer> {
    for (;;) {
      const chunk = await this.#process._nextChunk(this.#fd);
      if (chunk === undefined) return;
      yield chunk;
    }
  }

  /** Every byte until the stream ends. */
  async bytes(): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const chunk of this.chunks()) parts.push(chunk);
    return Buffer.concat(parts);
  }

  /** Everything until the stream ends, as UTF-8 text. */
  async text(): Promise<string> {
    return (await this.bytes()).toString("utf8");
  }

  /** Lines as text, each with its trailing newline (the last one may have none). */
  async *lines(): AsyncGenerator<string> {
    const decoder = new TextDecoder("utf-8");
    let pending = "";
    for await (const chunk of this.chunks()) {
      pending += decoder.decode(chunk, { stream: true });
      let newline: number;
      while ((newline = pending.indexOf("\n")) >= 0) {
        yield pending.slice(0, newline + 1);
        pending = pending.slice(newline + 1);
      }
    }
    pending += decoder.decode();
    if (pending) yield pending;
  }

  [Symbol.asyncIterator](): AsyncIterator<string> {
    return this.lines();
  }
}

/** The stdin of a {@link Process}. */
export class StdinWriter {
  readonly #process: Process;
  #closed = false;

  /** @internal */
  constructor(process: Process) {
    this.#process = process;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Send `data` (text as UTF-8); resolves once it is handed to the socket. */
  async write(data: string | Uint8Array): Promise<void> {
    if (this.#closed) throw new InvalidArgumentError("stdin is closed; write before calling stdin.close()");
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data);
    for (let i = 0; i < bytes.length; i += STDIN_CHUNK) {
      const frame = Buffer.concat([Buffer.of(STDIN), bytes.subarray(i, i + STDIN_CHUNK)]);
      await this.#process._send(frame);
    }
  }

  /** Close stdin: the process reads end-of-file. Closing twice is fine. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#process._send(JSON.stringify({ type: "stdin_eof" }));
  }
}

export interface ExecOptions {
  env?: Record<string, string>;
  workdir?: string;
  /** Seconds: the command is killed when it runs longer (`wait()` then throws). */
  timeout?: number;
  /** Give the command a terminal; stderr is merged into stdout then. */
  pty?: boolean;
  cols?: number;
  rows?: number;
}

/**
 * A command running in a sandbox. Get one from `sb.exec()`.
 *
 * Concurrency: one reader per stream at a time (two readers of the same stream each get
 * some of its chunks); stdout, stderr, stdin and `wait()` may be used concurrently.
 *
 * @example
 * ```ts
 * const p = await sb.exec(["python3", "-c", "print(input()[::-1])"]);
 * await p.stdin.write("hello\n");
 * await p.stdin.close();
 * console.log(await p.stdout.text(), await p.wait());
 * ```
 */
export class Process {
  readonly sandboxId: string;
  readonly argv: string[];
  readonly timeout: number | undefined;
  readonly stdout: OutputStream;
  readonly stderr: OutputStream;
  readonly stdin: StdinWriter;
  /** The exit code once the process has exited. */
  exitCode: number | undefined;
  /** Whether the process was killed for memory. */
  oom = false;
  /** Whether the process was killed at its `timeout`. */
  timedOut = false;

  readonly #ws: WebSocket;
  readonly #client: Client;
  readonly #buffers = new Map<number, Buffer[]>([
    [STDOUT, []],
    [STDERR, []],
  ]);
  #buffered = 0;
  #demand = 0;
  #started = false;
  #closed = false;
  #closeReason = "";
  #error: StockadeError | undefined;
  #wake: Array<() => void> = [];

  private constructor(ws: WebSocket, client: Client, sandboxId: string, argv: string[], timeout: number | undefined) {
    this.#ws = ws;
    this.#client = client;
    this.sandboxId = sandboxId;
    this.argv = argv;
    this.timeout = timeout;
    this.stdout = new OutputStream(this, STDOUT);
    this.stderr = new OutputStream(this, STDERR);
    this.stdin = new StdinWriter(this);
    ws.on("message", (data: Buffer, isBinary: boolean) => this.#handle(data, isBinary));
    ws.on("close", (code: number, reason: Buffer) => {
      this.#closed = true;
      this.#closeReason = reason.toString() || `closed with code ${code}`;
      this.#notify();
    });
    ws.on("error", (exc: Error) => {
      this.#error ??= new StockadeConnectionError(`the exec connection to sandbox ${sandboxId} failed: ${exc.message}`);
    });
  }

  /** @internal Connect, send the command and resolve once the server says it runs. */
  static async _start(client: Client, sandboxId: string, argv: string[], options: ExecOptions): Promise<Process> {
    const ws = await client.connectWs(sandboxPath(sandboxId, "/exec/ws"));
    const process = new Process(ws, client, sandboxId, argv, options.timeout);
    try {
      await process._send(
        JSON.stringify({
          argv,
          env: options.env ?? {},
          workdir: options.workdir ?? null,
          timeout: options.timeout ?? null,
          pty: options.pty ?? false,
          cols: options.cols ?? 80,
          rows: options.rows ?? 24,
        }),
      );
      await process.#until(() => process.#started || process.#closed);
      if (!process.#started) throw await process.#endedEarly();
    } catch (exc) {
      ws.terminate();
      throw exc;
    }
    return process;
  }

  #handle(data: Buffer, isBinary: boolean): void {
    if (isBinary) {
      const fd = data[0];
      const buffer = fd === undefined ? undefined : this.#buffers.get(fd);
      if (buffer === undefined || data.length < 2) return; // an unknown stream: skip it
      buffer.push(data.subarray(1));
      this.#buffered += data.length - 1;
      if (this.#demand === 0 && this.#buffered > HIGH_WATER) this.#ws.pause();
    } else {
      let event: Record<string, unknown> | undefined;
      try {
        event = JSON.parse(data.toString("utf8")) as Record<string, unknown>;
      } catch {
        event = undefined;
      }
      if (event === null || typeof event !== "object") {
        this.#error ??= new ServerError(`the server sent a malformed event: ${data.toString("utf8").slice(0, 200)}`);
      } else if (event.type === "started") {
        this.#started = true;
      } else if (event.type === "exit") {
        const code = event.exit_code;
        if (typeof code !== "number" || !Number.isInteger(code)) {
          this.#error ??= new ServerError(`the server sent a malformed exit event: ${data.toString("utf8").slice(0, 200)}`);
        } else {
          this.exitCode = code;
          this.timedOut = Boolean(event.timed_out);
          this.oom = Boolean(event.oom);
        }
      } else if (event.type === "error") {
        this.#error ??= errorFromBody(undefined, { error: event.error });
      } // a newer server's event type: skip it rather than fail
    }
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
  }

  /** Wait until `ready()` holds, receiving (unpausing the socket) meanwhile. */
  async #until(ready: () => boolean): Promise<void> {
    if (ready()) return;
    this.#demand += 1;
    if (this.#ws.isPaused) this.#ws.resume();
    try {
      while (!ready()) {
        await new Promise<void>((resolve) => this.#wake.push(resolve));
      }
    } finally {
      this.#demand -= 1;
    }
  }

  /** Whether no more output can come: the process exited (the server closes) or the socket closed. */
  get #ended(): boolean {
    return this.#closed;
  }

  /** @internal The next chunk of stream `fd`, or undefined at its end. */
  async _nextChunk(fd: number): Promise<Buffer | undefined> {
    const buffer = this.#buffers.get(fd) ?? [];
    await this.#until(() => buffer.length > 0 || this.#ended);
    const chunk = buffer.shift();
    if (chunk !== undefined) this.#buffered -= chunk.length;
    return chunk;
  }

  /** @internal Send one frame; resolves once the socket took it. */
  async _send(frame: Buffer | string): Promise<void> {
    if (this.#closed) throw await this.#endedEarly();
    await new Promise<void>((resolve, reject) =>
      this.#ws.send(frame, (exc) =>
        exc ? reject(new StockadeConnectionError(`sending to the process in sandbox ${this.sandboxId} failed: ${exc.message}`)) : resolve(),
      ),
    );
  }

  async #endedEarly(): Promise<StockadeError> {
    if (this.#error !== undefined) return this.#error;
    return await cutShort(this.#client, this.sandboxId, `\`${describe(this.argv)}\``, this.#closeReason || "closed");
  }

  /**
   * Wait for the process to exit and return its exit code; output nobody read yet stays
   * readable. Throws {@link CommandTimeoutError} when it ran past its `timeout`.
   */
  async wait(): Promise<number> {
    await this.#until(() => this.exitCode !== undefined || this.#closed);
    if (this.exitCode === undefined) throw await this.#endedEarly();
    if (this.timedOut) throw new CommandTimeoutError(this.argv, this.sandboxId, this.timeout);
    return this.exitCode;
  }

  /** The exit code if the process has exited, else undefined; never waits. */
  poll(): number | undefined {
    return this.exitCode;
  }

  /** Send a signal (`"SIGTERM"`, `"INT"`, `9`…) to the process. */
  async signal(sig: string | number): Promise<void> {
    const message = JSON.stringify({ type: "signal", signal: signalName(sig) });
    if (!this.#closed) await this._send(message);
  }

  /** Kill the process with SIGKILL; `wait()` then returns its code. */
  async kill(): Promise<void> {
    await this.signal("SIGKILL");
  }

  /** Resize the process's terminal (only with `pty: true`). */
  async resize(cols: number, rows: number): Promise<void> {
    if (!(cols > 0 && rows > 0)) {
      throw new InvalidArgumentError(`a terminal size must be positive, got ${cols}x${rows}`);
    }
    if (!this.#closed) await this._send(JSON.stringify({ type: "resize", cols: Math.trunc(cols), rows: Math.trunc(rows) }));
  }

  /** Close the connection; a process that still runs is killed by the server. */
  close(): void {
    this.#ws.close();
  }
}
