/** An image named on the server: a base image, a built one or a registry reference. */
import type { Connection } from "./client.js";
import { clientFor } from "./client.js";
import type { ImageInfo } from "./types.js";

/**
 * An image by name, for `Sandbox.create({image})` (a plain string works as well).
 *
 * @example
 * ```ts
 * const sb = await Sandbox.create({ image: Image.fromName("code-interpreter") });
 * ```
 */
export class Image {
  private constructor(readonly name: string) {}

  /** The image called `name` (`"python"`, `"agent:v1"`, `"img-…"`, `"python:3.12-slim"`). */
  static fromName(name: string): Image {
    return new Image(name);
  }

  /** Every image the server knows. */
  static async list(connection: Connection = {}): Promise<ImageInfo[]> {
    const data = await clientFor(connection).request<{ images: ImageInfo[] }>("GET", "/v1/images");
    return data.images;
  }

  toString(): string {
    return this.name;
  }
}
