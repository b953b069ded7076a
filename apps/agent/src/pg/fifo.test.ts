import { describe, expect, it } from "vitest";
import { Fifo } from "./fifo.js";

describe("Fifo", () => {
  it("keeps the order of an array through any mix of push, shift and removeAt", () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const fifo = new Fifo<number>();
    const model: number[] = [];
    for (let step = 0; step < 50_000; step++) {
      const r = random();
      if (r < 0.55) {
        fifo.push(step);
        model.push(step);
      } else if (r < 0.98) {
        expect(fifo.shift()).toBe(model.shift());
      } else {
        const i = Math.floor(random() * (model.length + 1));
        fifo.removeAt(i);
        if (i < model.length) model.splice(i, 1);
      }
      expect(fifo.length).toBe(model.length);
      expect(fifo.first).toBe(model[0]);
      if (step % 997 === 0) {
        expect([...fifo]).toEqual(model);
        expect(fifo.at(model.length - 1)).toBe(model[model.length - 1]);
        expect(fifo.at(model.length)).toBeUndefined();
        expect(fifo.at(-1)).toBeUndefined();
      }
    }
  });

  it("shifts a long queue in linear time", () => {
    const fifo = new Fifo<object>();
    for (let i = 0; i < 400_000; i++) fifo.push({ i });
    let n = 0;
    while (fifo.shift() !== undefined) n++;
    expect(n).toBe(400_000);
    expect(fifo.length).toBe(0);
    expect(fifo.shift()).toBeUndefined();
  });
});
