/**
 * Where the server is and how to authenticate: the one place that reads the environment,
 * resolved in the Python SDK's order (first match wins).
 *
 * - URL: the `url` option, then `$STOCKADE_URL`, then `http://127.0.0.1:7423`.
 * - Token: the `token` option, then `$STOCKADE_TOKEN`, then the local server's token file
 *   `<data dir>/token` (`$STOCKADE_DATA_DIR`, else `/var/lib/stockade`), read only when
 *   the URL points at this machine, so a wrong `STOCKADE_URL` never sends it elsewhere.
 * - Certificates: the `caBundle` option, else `$STOCKADE_CA_BUNDLE` (a PEM file, or a
 *   directory of them), trusted on top of Node's own CA store.
 */
import { readFileSync, readdirSync, statSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { rootCertificates } from "node:tls";
import { AuthenticationError, InvalidArgumentError } from "./errors.js";

export const DEFAULT_URL = "http://127.0.0.1:7423";
export const URL_ENV = "STOCKADE_URL";
export const TOKEN_ENV = "STOCKADE_TOKEN";
export const DATA_DIR_ENV = "STOCKADE_DATA_DIR";
export const CA_BUNDLE_ENV = "STOCKADE_CA_BUNDLE";

function env(name: string): string | undefined {
  // An exported-but-empty variable means "unset", as in most CLIs.
  const value = (process.env[name] ?? "").trim();
  return value === "" ? undefined : value;
}

/** The server's base URL, without a trailing slash. */
export function resolveUrl(url?: string): string {
  const resolved = (url ?? "").trim() || env(URL_ENV) || DEFAULT_URL;
  let parsed: URL;
  try {
    parsed = new URL(resolved);
  } catch {
    parsed = new URL("invalid:");
  }
  if ((parsed.protocol !== "http:" && parsed.protocol !== "https:") || !parsed.hostname) {
    throw new InvalidArgumentError(
      `server URL ${JSON.stringify(resolved)} is not an http(s) URL; ` +
        `set ${URL_ENV} or pass {url: "${DEFAULT_URL}"}`,
    );
  }
  return resolved.replace(/\/+$/, "");
}

/** Whether `url` points at this machine. */
export function isLocal(url: string): boolean {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1";
}

/** The bearer token for `url`; throws AuthenticationError naming the fixes. */
export function resolveToken(token: string | undefined, url: string): string {
  if (token !== undefined && token.trim()) return token.trim();
  const fromEnv = env(TOKEN_ENV);
  if (fromEnv) return fromEnv;
  const path = join(env(DATA_DIR_ENV) ?? "/var/lib/stockade", "token");
  if (!isLocal(url)) {
    throw new AuthenticationError(
      `no token for ${url}: set ${TOKEN_ENV} (or pass {token}); ` +
        `the local token file ${path} is only used for a server on this machine`,
    );
  }
  let why: string;
  try {
    const fromFile = readFileSync(path, "utf8").trim();
    if (fromFile) return fromFile;
    why = "is empty";
  } catch (exc) {
    const code = (exc as NodeJS.ErrnoException).code;
    why =
      code === "ENOENT"
        ? "does not exist (is `stockade serve` running with this data dir?)"
        : code === "EACCES"
          ? "is not readable by this user (the server runs as root; copy the token)"
          : `could not be read (${String(exc)})`;
  }
  throw new AuthenticationError(
    `no token for ${url}: set ${TOKEN_ENV} (or pass {token}), or make the token file ` +
      `${path} readable; it ${why}. ${DATA_DIR_ENV} moves the data dir`,
  );
}

/**
 * The CAs an https client trusts: Node's own plus the bundle (`caBundle`, else
 * `$STOCKADE_CA_BUNDLE`); undefined when there is no bundle (Node's defaults apply).
 */
export function resolveCa(caBundle?: string): string[] | undefined {
  const configured = caBundle ?? env(CA_BUNDLE_ENV);
  if (configured === undefined) return undefined;
  const source = caBundle !== undefined ? `caBundle=${configured}` : `${CA_BUNDLE_ENV}=${configured}`;
  let pems: string[];
  try {
    const files = statSync(configured).isDirectory()
      ? readdirSync(configured).map((name) => join(configured, name))
      : [configured];
    pems = files
      .filter((file) => statSync(file).isFile())
      .map((file) => readFileSync(file, "utf8"))
      .filter((text) => text.includes("-----BEGIN CERTIFICATE-----"));
  } catch {
    throw new InvalidArgumentError(
      `${source}: no such file; point it at the server's certificate (a PEM file; a server ` +
        "started with --tls-self-signed prints its path) or the CA that signed it",
    );
  }
  if (pems.length === 0) {
    throw new InvalidArgumentError(
      `${source} holds no PEM certificate; point it at the server's certificate ` +
        "(a file starting with -----BEGIN CERTIFICATE-----) or its CA's",
    );
  }
  return [...rootCertificates, ...pems];
}
