/**
 * A bounded cache with second-chance (CLOCK) eviction, an approximation of least-recently-used
 * that keeps hits cheap: a hit only sets a flag, where a true LRU would move the entry. A Map keeps
 * insertion order; eviction walks from the oldest entry, gives each recently used one a second
 * chance (clears its flag, moves it to the end) and removes the first one not used since. Every
 * entry is moved at most once per pass, so eviction is amortized O(1).
 *
 * Two bounds: a number of entries, and a total weight (the classifier weighs an entry by its key
 * length, so that many long texts cannot make the cache large).
 */
interface Slot<V> {
  value: V;
  weight: number;
  used: boolean;
}

export class LruCache<V> {
  private readonly slots = new Map<string, Slot<V>>();
  private totalWeight = 0;

  constructor(
    readonly maxEntries: number,
    readonly maxWeight = Infinity,
  ) {}

  get size(): number {
    return this.slots.size;
  }

  get weight(): number {
    return this.totalWeight;
  }

  get(key: string): V | undefined {
    const slot = this.slots.get(key);
    if (slot === undefined) return undefined;
    slot.used = true;
    return slot.value;
  }

  set(key: string, value: V, weight = 1): void {
    if (this.maxEntries <= 0 || weight > this.maxWeight) return;
    const existing = this.slots.get(key);
    if (existing !== undefined) {
      this.slots.delete(key);
      this.totalWeight -= existing.weight;
    }
    while (this.slots.size > 0 && (this.slots.size >= this.maxEntries || this.totalWeight + weight > this.maxWeight)) {
      this.evictOne();
    }
    this.slots.set(key, { value, weight, used: false });
    this.totalWeight += weight;
  }

  private evictOne(): void {
    for (;;) {
      const oldest = this.slots.entries().next();
      if (oldest.done) return;
      const [key, slot] = oldest.value;
      this.slots.delete(key);
      if (!slot.used) {
        this.totalWeight -= slot.weight;
        return;
      }
      slot.used = false;
      this.slots.set(key, slot);
    }
  }
}
