/** A memory snapshot (`sn-…`): a sandbox's processes, memory and files, restorable any number of times. */
import type { Client, Connection } from "./client.js";
import { clientFor } from "./client.js";
import type { Sandbox, RestoreOptions } from "./sandbox.js";
import type { SnapshotInfo } from "./types.js";

// Set by sandbox.ts: importing it here would make the two modules import each other.
let sandboxClass: typeof Sandbox | undefined;
/** @internal */
export function _registerSandbox(cls: typeof Sandbox): void {
  sandboxClass = cls;
}

function path(id: string): string {
  return `/v1/snapshots/${encodeURIComponent(id)}`;
}

/**
 * @example
 * ```ts
 * const snap = await sb.snapshot();
 * const again = await snap.restore();
 * ```
 */
export class Snapshot {
  readonly id: string;

  constructor(
    readonly info: SnapshotInfo,
    readonly client: Client,
  ) {
    this.id = info.id;
  }

  /** The snapshot with ID `id`; throws NotFoundError. */
  static async fromId(id: string, connection: Connection = {}): Promise<Snapshot> {
    const client = clientFor(connection);
    return new Snapshot(await client.request<SnapshotInfo>("GET", path(id)), client);
  }

  /** Every snapshot, newest first (or only those of `sandboxId`). */
  static async list(options: Connection & { sandboxId?: string } = {}): Promise<Snapshot[]> {
    const client = clientFor(options);
    const data = await client.request<{ snapshots: SnapshotInfo[] }>("GET", "/v1/snapshots", {
      query: { sandbox_id: options.sandboxId },
    });
    return data.snapshots.map((info) => new Snapshot(info, client));
  }

  /** A new sandbox restored from this snapshot; the snapshot stays for more restores. */
  async restore(options: RestoreOptions = {}): Promise<Sandbox> {
    if (sandboxClass === undefined) throw new Error("the Sandbox module is not loaded");
    return await sandboxClass.create({ ...options, snapshot: this.id, client: this.client });
  }

  /** Delete the snapshot and free its disk space. */
  async delete(): Promise<void> {
    await this.client.request("DELETE", path(this.id));
  }
}
