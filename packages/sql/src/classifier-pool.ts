/**
 * Classifies long query texts on worker threads, the second impure edge of @moat/sql (beside
 * parser.ts): parsing costs about 1 ms per KiB of text here, and a text longer than the classifier
 * caches is parsed every time it is sent, so one session sending large statements (an ORM's long
 * IN lists, a bulk INSERT, a restore) would otherwise hold the proxy's event loop, and with it
 * every other session, for as long (measured before this pool: a 48 MiB SELECT held the agent's
 * other sessions ~25 s).
 *
 * Workers are started on the first long text and leave after `idleMs` with nothing to do (each
 * loads its own parser: about 30 MiB). A worker that dies (out of memory on a huge text, a crash)
 * fails the texts it held, never another session's, and a new one is started for the next text.
 */
import { Worker } from "node:worker_threads";
import type { Classification, LexicalState } from "./types.js";

export interface ClassifierPoolOptions {
  /** Worker threads at most (default 1: the proxy's own thread keeps the other core). */
  workers?: number;
  /** A worker with nothing to do for this long exits (default 30 s). */
  idleMs?: number;
  /** The worker script (default: classify-worker.js beside this module). */
  workerUrl?: URL;
}

export interface ClassifierPool {
  /**
   * Classifies `text` on a worker: the same result as classifyText(text, lexical) on this thread.
   * Rejects when the worker could not (it died, or the pool is closed).
   */
  classify(text: string, lexical: LexicalState): Promise<Classification>;
  /** Texts queued or being classified. */
  readonly pending: number;
  /** Worker threads running now. */
  readonly workers: number;
  /** Stops every worker; what is pending is rejected. */
  close(): Promise<void>;
}

interface Job {
  id: number;
  text: string;
  scs: boolean;
  resolve: (c: Classification) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  job: Job | undefined;
  idle: NodeJS.Timeout | undefined;
}

/** What a worker answers for a job: its classification, or why it could not classify it. */
export type WorkerReply = { id: number; result: Classification } | { id: number; error: string };

/** What the pool sends a worker. */
export interface WorkerRequest {
  id: number;
  text: string;
  standardConformingStrings: boolean;
}

export function createClassifierPool(options: ClassifierPoolOptions = {}): ClassifierPool {
  const max = Math.max(1, options.workers ?? 1);
  const idleMs = options.idleMs ?? 30_000;
  const url = options.workerUrl ?? new URL("./classify-worker.js", import.meta.url);
  const slots = new Set<Slot>();
  const queue: Job[] = [];
  let nextId = 1;
  let closed = false;

  function start(): Slot {
    // Not kept alive by its worker: the process exits when its own work is done.
    // No heap limit of its own: V8 aborts the whole process when a worker reaches its limit while
    // in WebAssembly (measured: a 20 MiB IN list under a 512 MiB limit). The proxy bounds the texts
    // it parses instead (maxStatementLength).
    const worker = new Worker(url);
    worker.unref();
    const slot: Slot = { worker, job: undefined, idle: undefined };
    const lost = (why: string) => {
      if (!slots.delete(slot)) return;
      clearTimeout(slot.idle);
      slot.job?.reject(new Error(why));
      slot.job = undefined;
      void worker.terminate();
      dispatch();
    };
    worker.on("message", (reply: WorkerReply) => {
      const job = slot.job;
      if (job === undefined || reply.id !== job.id) return lost("the classifier worker answered out of turn");
      slot.job = undefined;
      if ("result" in reply) job.resolve(reply.result);
      else job.reject(new Error(reply.error));
      dispatch();
    });
    worker.on("error", (error: Error) => lost(`the classifier worker failed: ${error.message}`));
    worker.on("exit", (code) => lost(`the classifier worker exited (code ${code})`));
    slots.add(slot);
    return slot;
  }

  function send(slot: Slot, job: Job): void {
    clearTimeout(slot.idle);
    slot.idle = undefined;
    slot.job = job;
    const request: WorkerRequest = { id: job.id, text: job.text, standardConformingStrings: job.scs };
    slot.worker.postMessage(request);
  }

  function dispatch(): void {
    if (closed) return;
    for (const slot of slots) {
      if (slot.job !== undefined) continue;
      const job = queue.shift();
      if (job === undefined) {
        if (slot.idle === undefined) {
          slot.idle = setTimeout(() => {
            slots.delete(slot);
            void slot.worker.terminate();
          }, idleMs);
          slot.idle.unref();
        }
        continue;
      }
      send(slot, job);
    }
    while (queue.length > 0 && slots.size < max) send(start(), queue.shift() as Job);
  }

  return {
    classify(text, lexical) {
      if (closed) return Promise.reject(new Error("the classifier pool is closed"));
      return new Promise<Classification>((resolve, reject) => {
        queue.push({ id: nextId++, text, scs: lexical.standardConformingStrings === true, resolve, reject });
        dispatch();
      });
    },
    get pending() {
      let running = 0;
      for (const slot of slots) if (slot.job !== undefined) running++;
      return queue.length + running;
    },
    get workers() {
      return slots.size;
    },
    async close() {
      closed = true;
      const error = new Error("the classifier pool is closed");
      for (const job of queue.splice(0)) job.reject(error);
      const stopping: Promise<number>[] = [];
      for (const slot of [...slots]) {
        slots.delete(slot);
        clearTimeout(slot.idle);
        slot.job?.reject(error);
        stopping.push(slot.worker.terminate());
      }
      await Promise.all(stopping);
    },
  };
}
