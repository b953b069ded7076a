/**
 * A first-in first-out queue with O(1) shift at any length. `Array.prototype.shift` moves every
 * element once the array's storage is in V8's large-object space (past ~16 000 elements), which
 * made a client's 60 000-message pipeline cost seconds of the event loop (review 23).
 */
export class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  /** The oldest element (undefined when empty). */
  get first(): T | undefined {
    return this.items[this.head];
  }

  /** The element at `index` from the oldest (undefined past the end). */
  at(index: number): T | undefined {
    return index < 0 ? undefined : this.items[this.head + index];
  }

  push(item: T): void {
    this.items.push(item);
  }

  shift(): T | undefined {
    if (this.head === this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      // Copying what is left costs no more than the shifts since the last copy.
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Removes the element at `index` from the oldest (moves the newer ones). */
  removeAt(index: number): void {
    if (index >= 0 && index < this.length) this.items.splice(this.head + index, 1);
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = this.head; i < this.items.length; i++) yield this.items[i] as T;
  }
}
