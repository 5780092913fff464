/**
 * What a finished command looks like, and the two errors a command can end in. A non-zero
 * exit is data (`exitCode`); it becomes a {@link CommandError} only with `check: true`.
 */
import { StockadeError, StockadeTimeoutError, InvalidArgumentError } from "./errors.js";

/** A short, shell-quoted rendering of a command for messages. */
export function describe(argv: readonly string[]): string {
  const text = argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'"'"'`)}'`)).join(" ");
  return text.length <= 80 ? text : `${text.slice(0, 77)}...`;
}

/** `run()`'s command as argv: a string runs through `sh -c`, an array as is. */
export function commandArgv(command: string | readonly string[]): string[] {
  if (typeof command === "string") {
    if (!command.trim()) {
      throw new InvalidArgumentError("the command is empty; pass a shell string or an argv array");
    }
    return ["sh", "-c", command];
  }
  return checkedArgv(command);
}

/** Validate an argv array before it goes on the wire. */
export function checkedArgv(argv: readonly string[]): string[] {
  if (!Array.isArray(argv) || argv.length === 0) {
    throw new InvalidArgumentError("the command is empty; pass at least the program to run");
  }
  for (const arg of argv) {
    if (typeof arg !== "string") {
      throw new InvalidArgumentError(`command arguments must be strings, got ${JSON.stringify(arg)}`);
    }
  }
  return [...argv];
}

/**
 * The outcome of `sb.run()`: exit code and everything the command printed.
 *
 * `stdout`/`stderr` decode the output as UTF-8 (undecodable bytes become U+FFFD);
 * `stdoutBytes`/`stderrBytes` hold it exactly. `oom`: the command was killed for memory.
 */
export class CommandResult {
  constructor(
    readonly argv: string[],
    readonly exitCode: number,
    readonly stdoutBytes: Buffer = Buffer.alloc(0),
    readonly stderrBytes: Buffer = Buffer.alloc(0),
    readonly oom = false,
    readonly sandboxId = "",
  ) {}

  get stdout(): string {
    return this.stdoutBytes.toString("utf8");
  }

  get stderr(): string {
    return this.stderrBytes.toString("utf8");
  }

  /** Whether the command exited with code 0. */
  get ok(): boolean {
    return this.exitCode === 0;
  }

  /** This result, or a thrown {@link CommandError} for a non-zero exit. */
  check(): CommandResult {
    if (!this.ok) throw new CommandError(this);
    return this;
  }
}

/** `run(cmd, {check: true})` exited non-zero; `result` has its output. */
export class CommandError extends StockadeError {
  static override readonly defaultCode: string = "command_failed";
  static override readonly defaultStatus: number = 0;
  readonly result: CommandResult;

  constructor(result: CommandResult) {
    const tail = (result.stderr.trim() || result.stdout.trim()).split("\n").slice(-5).join("\n");
    super(
      `\`${describe(result.argv)}\` exited with code ${result.exitCode}` +
        (result.sandboxId ? ` in sandbox ${result.sandboxId}` : "") +
        (tail ? `:\n${tail}` : ""),
    );
    this.result = result;
  }
}

/** A command ran past its `timeout` and was killed; `result` has the output so far. */
export class CommandTimeoutError extends StockadeTimeoutError {
  readonly result: CommandResult | undefined;

  constructor(argv: string[], sandboxId: string, timeout: number | undefined, result?: CommandResult) {
    super(
      `\`${describe(argv)}\` in sandbox ${sandboxId} ran past its timeout` +
        (timeout !== undefined ? ` of ${timeout} s` : "") +
        " and was killed; pass a larger `timeout` to let it finish",
    );
    this.result = result;
  }
}
