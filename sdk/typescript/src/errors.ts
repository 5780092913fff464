/**
 * Stockade's errors: the same tree, codes and statuses as the Python SDK's `stockade.errors`.
 *
 * ```text
 * StockadeError
 * ├── AuthenticationError            401 unauthorized
 * │   ├── ForbiddenError             403 forbidden: the key's role may not do that
 * │   └── RegistryAuthError          403 registry_auth_failed
 * ├── NotFoundError                  404 not_found
 * │   └── ImageNotFoundError         404 image_not_found
 * ├── InvalidArgumentError           400 bad_request, 413 payload_too_large, 422 invalid_argument
 * │   └── UnsupportedImageError      422 unsupported_image
 * │       └── UnsafeLayerError       422 unsafe_layer
 * ├── ConflictError                  409 conflict
 * │   ├── SandboxTerminatedError     409 sandbox_terminated
 * │   ├── SandboxPausedError         409 sandbox_paused
 * │   ├── SandboxStartingError       409 sandbox_starting
 * │   └── KernelUnavailableError     409 kernel_unavailable
 * ├── QuotaExceededError             429 quota_exceeded
 * │   └── RateLimitedError           429 rate_limited: has `retryAfter` (seconds)
 * ├── StockadeTimeoutError           504 timeout, and an exec that ran past its `timeout`
 * │   └── CommandTimeoutError        run() past its timeout; has the output so far
 * ├── CommandError                   run({check: true}) exited non-zero
 * ├── BuildError                     422 build_failed
 * ├── RegistryError                  502 registry_error
 * │   ├── RegistryUnreachableError   502 registry_unreachable
 * │   └── DigestMismatchError        502 digest_mismatch
 * ├── ServerError                    500 internal (and any other 5xx)
 * └── StockadeConnectionError        the server could not be reached
 * ```
 *
 * The server answers every error with `{"error": {"code", "message"}}`; {@link errorFromBody}
 * is the one place where codes become classes. A code this SDK does not know yet still
 * gives the class of its HTTP status.
 */

export interface ErrorOptions {
  code?: string;
  status?: number;
  requestId?: string;
  cause?: unknown;
}

/** Root of every Stockade error: `code` is the API's error code, `status` the HTTP one. */
export class StockadeError extends Error {
  static readonly defaultCode: string = "internal";
  static readonly defaultStatus: number = 500;
  readonly code: string;
  readonly status: number;
  readonly requestId: string | undefined;

  constructor(message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const cls = new.target as unknown as typeof StockadeError;
    this.name = new.target.name;
    this.code = options.code ?? cls.defaultCode;
    this.status = options.status ?? cls.defaultStatus;
    this.requestId = options.requestId;
  }
}

/** The token was missing or wrong. */
export class AuthenticationError extends StockadeError {
  static override readonly defaultCode: string = "unauthorized";
  static override readonly defaultStatus: number = 401;
}

/** The credential is good, but its role may not make this call; the message names the role. */
export class ForbiddenError extends AuthenticationError {
  static override readonly defaultCode: string = "forbidden";
  static override readonly defaultStatus: number = 403;
}

/** The registry refused the credentials given. */
export class RegistryAuthError extends AuthenticationError {
  static override readonly defaultCode: string = "registry_auth_failed";
  static override readonly defaultStatus: number = 403;
}

/** The sandbox, image, file or route does not exist. */
export class NotFoundError extends StockadeError {
  static override readonly defaultCode: string = "not_found";
  static override readonly defaultStatus: number = 404;
}

/** The registry has no such repository, tag or digest. */
export class ImageNotFoundError extends NotFoundError {
  static override readonly defaultCode: string = "image_not_found";
}

/** A request value was malformed or out of range; the message names the allowed range. */
export class InvalidArgumentError extends StockadeError {
  static override readonly defaultCode: string = "invalid_argument";
  static override readonly defaultStatus: number = 422;
}

/** The image exists but cannot run here. */
export class UnsupportedImageError extends InvalidArgumentError {
  static override readonly defaultCode: string = "unsupported_image";
}

/** A layer archive tries to write outside its directory, or is not a valid archive. */
export class UnsafeLayerError extends UnsupportedImageError {
  static override readonly defaultCode: string = "unsafe_layer";
}

/** The operation does not fit the current state of its target. */
export class ConflictError extends StockadeError {
  static override readonly defaultCode: string = "conflict";
  static override readonly defaultStatus: number = 409;
}

/** The sandbox is no longer running; the message says how it ended. */
export class SandboxTerminatedError extends ConflictError {
  static override readonly defaultCode: string = "sandbox_terminated";
}

/** The sandbox is paused: resume it first, or create it with `autoResume: true`. */
export class SandboxPausedError extends ConflictError {
  static override readonly defaultCode: string = "sandbox_paused";
}

/** The sandbox is still starting: try again in a moment. */
export class SandboxStartingError extends ConflictError {
  static override readonly defaultCode: string = "sandbox_starting";
}

/** The sandbox's image has no kernel for the code's language (use `code-interpreter`). */
export class KernelUnavailableError extends ConflictError {
  static override readonly defaultCode: string = "kernel_unavailable";
}

/** The call would take the tenant past one of its quotas; the message names the limit. */
export class QuotaExceededError extends StockadeError {
  static override readonly defaultCode: string = "quota_exceeded";
  static override readonly defaultStatus: number = 429;
}

/** The tenant creates sandboxes faster than its `creates_per_minute`. */
export class RateLimitedError extends QuotaExceededError {
  static override readonly defaultCode: string = "rate_limited";
  /** Seconds until a create would be let in (the `Retry-After` header), when it said. */
  retryAfter: number | undefined;

  constructor(message: string, options: ErrorOptions & { retryAfter?: number } = {}) {
    super(message, options);
    this.retryAfter = options.retryAfter;
  }
}

/** An operation or a command ran past its deadline. */
export class StockadeTimeoutError extends StockadeError {
  static override readonly defaultCode: string = "timeout";
  static override readonly defaultStatus: number = 504;
}

/** An image build failed; the message has the step's exit code and last lines. */
export class BuildError extends StockadeError {
  static override readonly defaultCode: string = "build_failed";
  static override readonly defaultStatus: number = 422;
}

/** The registry answered something unusable. */
export class RegistryError extends StockadeError {
  static override readonly defaultCode: string = "registry_error";
  static override readonly defaultStatus: number = 502;
}

/** The registry could not be reached. */
export class RegistryUnreachableError extends RegistryError {
  static override readonly defaultCode: string = "registry_unreachable";
}

/** Downloaded content does not hash to the digest that names it. */
export class DigestMismatchError extends RegistryError {
  static override readonly defaultCode: string = "digest_mismatch";
}

/** The server failed unexpectedly; the message carries the request ID it logged. */
export class ServerError extends StockadeError {
  static override readonly defaultCode: string = "internal";
  static override readonly defaultStatus: number = 500;
}

/** The server could not be reached. */
export class StockadeConnectionError extends StockadeError {
  static override readonly defaultCode: string = "connection_error";
  static override readonly defaultStatus: number = 0;
}

type ErrorClass = new (message: string, options?: ErrorOptions) => StockadeError;

const BY_CODE: Record<string, ErrorClass> = {
  unauthorized: AuthenticationError,
  forbidden: ForbiddenError,
  not_found: NotFoundError,
  bad_request: InvalidArgumentError,
  payload_too_large: InvalidArgumentError,
  invalid_argument: InvalidArgumentError,
  conflict: ConflictError,
  sandbox_terminated: SandboxTerminatedError,
  sandbox_paused: SandboxPausedError,
  sandbox_starting: SandboxStartingError,
  kernel_unavailable: KernelUnavailableError,
  timeout: StockadeTimeoutError,
  internal: ServerError,
  image_not_found: ImageNotFoundError,
  unsupported_image: UnsupportedImageError,
  unsafe_layer: UnsafeLayerError,
  registry_auth_failed: RegistryAuthError,
  registry_error: RegistryError,
  registry_unreachable: RegistryUnreachableError,
  digest_mismatch: DigestMismatchError,
  build_failed: BuildError,
  quota_exceeded: QuotaExceededError,
  rate_limited: RateLimitedError,
};

const BY_STATUS: Record<number, ErrorClass> = {
  400: InvalidArgumentError,
  401: AuthenticationError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  413: InvalidArgumentError,
  422: InvalidArgumentError,
  429: QuotaExceededError,
  504: StockadeTimeoutError,
};

function str(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

/**
 * The typed error for an API error answer: `body` is the decoded JSON (or anything else
 * when the answer was not JSON, a proxy's page say); the status decides the class then.
 * `status` undefined: an in-stream error event, which keeps its class's own status.
 */
export function errorFromBody(status: number | undefined, body: unknown): StockadeError {
  let code: string | undefined;
  let message: string | undefined;
  let requestId: string | undefined;
  const err =
    body !== null && typeof body === "object" ? (body as { error?: unknown }).error : undefined;
  if (err !== null && typeof err === "object") {
    const fields = err as Record<string, unknown>;
    code = str(fields.code);
    message = str(fields.message);
    requestId = str(fields.request_id);
  }
  let cls: ErrorClass | undefined =
    (code !== undefined && Object.hasOwn(BY_CODE, code) ? BY_CODE[code] : undefined) ??
    (status !== undefined ? BY_STATUS[status] : undefined);
  if (cls === undefined) {
    cls = status === undefined || status >= 500 ? ServerError : StockadeError;
  }
  if (message === undefined) {
    message =
      typeof body === "string" && body.trim()
        ? `the server answered HTTP ${status}: ${body.trim().slice(0, 200)}`
        : `the server answered HTTP ${status} without an error body`;
  }
  const options: ErrorOptions = { requestId };
  if (code !== undefined) options.code = code;
  if (status !== undefined) options.status = status;
  return new cls(message, options);
}

/** Seconds a `Retry-After` value asks to wait (seconds or an HTTP date), else undefined. */
export function retryAfterSeconds(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  let seconds = Number(value.trim());
  if (value.trim() === "" || !Number.isFinite(seconds)) {
    const when = Date.parse(value);
    if (Number.isNaN(when)) return undefined;
    seconds = (when - Date.now()) / 1000;
  }
  return Math.max(0, seconds);
}
