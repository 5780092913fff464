/**
 * What `sb.runCode()` returns, and how its NDJSON events (`stdout`, `stderr`, `result`,
 * `exception`, then `end`; docs/code-interpreter.md) fold into it. An exception in the
 * code is data (`execution.error`), never a thrown error.
 */
import { ServerError, errorFromBody } from "./errors.js";

const FORMATS = {
  text: "text/plain",
  html: "text/html",
  markdown: "text/markdown",
  svg: "image/svg+xml",
  png: "image/png",
  jpeg: "image/jpeg",
  pdf: "application/pdf",
  latex: "text/latex",
  json: "application/json",
  javascript: "application/javascript",
} as const;

/**
 * One object the code displayed: its last expression's value (`isMainResult`), or
 * something shown with `display()` or `plt.show()`. `data` is the MIME bundle; binary
 * formats (`png`, `jpeg`, `pdf`) are base64 strings, as Jupyter sends them.
 */
export class Result {
  constructor(
    readonly data: Readonly<Record<string, unknown>>,
    readonly isMainResult = false,
  ) {}

  #get(mime: string): string | undefined {
    const value = this.data[mime];
    return typeof value === "string" ? value : undefined;
  }

  get text(): string | undefined { return this.#get(FORMATS.text); }
  get html(): string | undefined { return this.#get(FORMATS.html); }
  get markdown(): string | undefined { return this.#get(FORMATS.markdown); }
  get svg(): string | undefined { return this.#get(FORMATS.svg); }
  get png(): string | undefined { return this.#get(FORMATS.png); }
  get jpeg(): string | undefined { return this.#get(FORMATS.jpeg); }
  get pdf(): string | undefined { return this.#get(FORMATS.pdf); }
  get latex(): string | undefined { return this.#get(FORMATS.latex); }
  get javascript(): string | undefined { return this.#get(FORMATS.javascript); }
  /** `application/json`: a JSON value (not its text), or undefined. */
  get json(): unknown { return this.data[FORMATS.json]; }

  /** The formats present: `"text"`, `"png"`… for the common ones, else the MIME type. */
  formats(): string[] {
    const known = Object.entries(FORMATS).filter(([, mime]) => mime in this.data).map(([name]) => name);
    const names = new Set<string>(Object.values(FORMATS));
    return [...known, ...Object.keys(this.data).filter((mime) => !names.has(mime))];
  }
}

/** An exception the code raised: `name` its class (`"ZeroDivisionError"`), `value` its message. */
export interface ExecutionError {
  name: string;
  value: string;
  traceback: string;
}

/** Everything one `runCode()` produced. */
export class Execution {
  constructor(
    readonly results: Result[],
    readonly logs: { stdout: string[]; stderr: string[] },
    readonly error: ExecutionError | undefined,
    readonly executionCount: number | undefined,
    readonly contextId: string | undefined,
    /** The output passed the server's cap and the rest was dropped. */
    readonly truncated: boolean,
    /** The run passed its `timeout` and was interrupted (`error` is its KeyboardInterrupt). */
    readonly timedOut: boolean,
  ) {}

  /** The `text/plain` of the main result (the last expression's value), if any. */
  get text(): string | undefined {
    return this.results.find((r) => r.isMainResult)?.text;
  }
}

export interface CodeCallbacks {
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onResult?: (result: Result) => void;
  onError?: (error: ExecutionError) => void;
}

function malformed(what: string, event: unknown): ServerError {
  return new ServerError(`the server sent a malformed ${what} event: ${JSON.stringify(event).slice(0, 200)}`);
}

/** Folds a code run's events into an {@link Execution}, calling the callbacks as they come. */
export class ExecutionBuilder {
  readonly #callbacks: CodeCallbacks;
  readonly #stdout: string[] = [];
  readonly #stderr: string[] = [];
  readonly #results: Result[] = [];
  #error: ExecutionError | undefined;
  #end: Record<string, unknown> | undefined;

  constructor(callbacks: CodeCallbacks = {}) {
    this.#callbacks = callbacks;
  }

  get ended(): boolean {
    return this.#end !== undefined;
  }

  /** Take one event; true when it was the last (`end`). An `error` event throws. */
  feed(event: Record<string, unknown>): boolean {
    switch (event.type) {
      case "stdout":
      case "stderr": {
        if (typeof event.text !== "string") throw malformed(event.type, event);
        (event.type === "stdout" ? this.#stdout : this.#stderr).push(event.text);
        (event.type === "stdout" ? this.#callbacks.onStdout : this.#callbacks.onStderr)?.(event.text);
        return false;
      }
      case "result": {
        const bundle = event.data;
        if (bundle === null || typeof bundle !== "object" || Array.isArray(bundle)) throw malformed("result", event);
        const result = new Result({ ...(bundle as Record<string, unknown>) }, Boolean(event.is_main_result));
        this.#results.push(result);
        this.#callbacks.onResult?.(result);
        return false;
      }
      case "exception": {
        if (typeof event.name !== "string") throw malformed("exception", event);
        const error: ExecutionError = {
          name: event.name,
          value: typeof event.value === "string" ? event.value : "",
          traceback: typeof event.traceback === "string" ? event.traceback : "",
        };
        // A cell raises once; should more come, the first is the cause worth reporting.
        this.#error ??= error;
        this.#callbacks.onError?.(error);
        return false;
      }
      case "end": {
        const count = event.execution_count;
        if (count !== undefined && count !== null && !Number.isInteger(count)) throw malformed("end", event);
        this.#end = event;
        return true;
      }
      case "error":
        throw errorFromBody(undefined, { error: event.error });
      default:
        return false; // a newer server's event type: skip it
    }
  }

  execution(): Execution {
    const end = this.#end ?? {};
    return new Execution(
      [...this.#results],
      { stdout: [...this.#stdout], stderr: [...this.#stderr] },
      this.#error,
      typeof end.execution_count === "number" ? end.execution_count : undefined,
      typeof end.context === "string" ? end.context : undefined,
      Boolean(end.truncated),
      Boolean(end.timed_out),
    );
  }
}
