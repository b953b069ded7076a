import { describe, expect, it } from "vitest";
import { LruCache } from "./lru.js";

describe("LruCache", () => {
  it("keeps at most maxEntries, evicting entries not used since the last pass first", () => {
    const cache = new LruCache<number>(3);
    cache.set("a", 1);
    cache.set("b", 2);
    cache.set("c", 3);
    expect(cache.get("a")).toBe(1);
    cache.set("d", 4);
    expect(cache.size).toBe(3);
    expect(cache.get("a")).toBe(1);
    expect(cache.get("b")).toBeUndefined();
  });

  it("keeps the total weight under maxWeight and refuses entries heavier than that", () => {
    const cache = new LruCache<string>(100, 10);
    cache.set("a", "a", 4);
    cache.set("b", "b", 4);
    cache.set("c", "c", 4);
    expect(cache.weight).toBeLessThanOrEqual(10);
    expect(cache.size).toBe(2);
    cache.set("huge", "x", 11);
    expect(cache.get("huge")).toBeUndefined();
    cache.set("b", "b2", 1);
    expect(cache.get("b")).toBe("b2");
    expect(cache.weight).toBe(5);
  });

  it("stores nothing with maxEntries 0", () => {
    const cache = new LruCache<number>(0);
    cache.set("a", 1);
    expect(cache.size).toBe(0);
  });
});
