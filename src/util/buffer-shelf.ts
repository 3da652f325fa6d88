// Concept: a shelf of buffers kept on this thread for the next user of the same size — fresh memory faults in every page it touches.
//
// On this kind of machine (a VM whose freed memory goes back to the host) a page touched for the first time costs
// several microseconds: a restore worker that took a fresh 4 MiB buffer per object, or a backup that read each MiB
// into a fresh buffer, spent more time faulting pages in than decoding or hashing them. A buffer taken here is the
// caller's alone until it gives it back; the shelf keeps a few per size (memory stays bounded).

/** Buffers kept per size. */
const KEPT_PER_SIZE = 4;

const shelves = new Map<number, Buffer[]>();

/** A buffer of exactly `size` bytes owning its whole memory: one given back earlier, or a new one. */
export function takeBuffer(size: number): Buffer {
  return shelves.get(size)?.pop() ?? Buffer.allocUnsafeSlow(size);
}

/** Gives back a buffer {@link takeBuffer} returned; the caller must hold no view of it any more. */
export function giveBackBuffer(buffer: Buffer): void {
  // Only whole buffers: a view would hand the rest of its memory to someone else.
  if (buffer.byteOffset !== 0 || buffer.byteLength !== buffer.buffer.byteLength) return;
  let shelf = shelves.get(buffer.length);
  if (!shelf) shelves.set(buffer.length, (shelf = []));
  // Given back twice, a buffer would go to two users.
  if (shelf.length < KEPT_PER_SIZE && !shelf.includes(buffer)) shelf.push(buffer);
}
