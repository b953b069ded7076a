/**
 * Classifies long query texts on worker threads, the second impure edge of @moat/sql (beside
 * parser.ts): parsing costs about 1 ms per KiB of text here, and a text longer than the classifier
 * caches is parsed every time it is sent, so one session sending large statements (an ORM's long
 * IN lists, a bulk INSERT, a restore) would otherwise hold the proxy's event loop, and with it
 * every other session, for as long (measured before this pool: a 48 MiB SELECT held the agent's
 * other sessions ~25 s).
 *
 * Workers are started on the first long text and leave after `idleMs` with nothing to do (each
 * loads its own parser: about 30 MiB). A worker that dies (a crash) fails the text it held, never
 * another caller's, and a new one is started for the next text. What waits is bounded
 * (`maxQueuedLength`), and a caller that goes away (its session ended) cancels its text: parsing
 * no longer slows a sender down, so nothing else may let texts pile up.
 */
import { Worker } from "node:worker_threads";
import type { Classification, LexicalState } from "./types.js";

export interface ClassifierPoolOptions {
  /** Worker threads at most (default 1: the proxy's own thread keeps the other core). */
  workers?: number;
  /** A worker with nothing to do for this long exits (default 30 s). */
  idleMs?: number;
  /**
   * Characters of text queued or being classified at most (default 64 Mi): past it a text is
   * refused at once (an error whose `code` is POOL_BUSY).
   */
  maxQueuedLength?: number;
  /** The worker script (default: classify-worker.js beside this module). */
  workerUrl?: URL;
}

export interface ClassifierPool {
  /**
   * Classifies `text` on a worker: the same result as classifyText(text, lexical) on this thread.
   * Rejects when the worker could not (it died, the pool is full or closed), or when `signal` aborts
   * first (a text still queued is dropped; a worker parsing it is stopped).
   */
  classify(text: string, lexical: LexicalState, signal?: AbortSignal): Promise<Classification>;
  /** Texts queued or being classified. */
  readonly pending: number;
  /** Characters of the texts queued or being classified. */
  readonly pendingLength: number;
  /** Worker threads running now. */
  readonly workers: number;
  /** Stops every worker; what is pending is rejected. */
  close(): Promise<void>;
}

/** The code of the error a text gets when the pool already holds `maxQueuedLength` characters. */
export const POOL_BUSY = "POOL_BUSY";

/**
 * The stack a worker's classifier runs on, in MiB: Node gives a worker's JavaScript this minus 192
 * KiB, and the main thread has V8's default 984 KiB. The same depth of nesting is then refused
 * (54001, the walks recurse) on either thread: a worker's default 4 MiB let through statements nested
 * 4x deeper than the proxy's own thread refused (review 20).
 */
const WORKER_STACK_MB = (984 + 192) / 1024;

interface Job {
  id: number;
  text: string;
  scs: boolean;
  resolve: (c: Classification) => void;
  reject: (e: Error) => void;
  /** Undoes the abort listener once the job is settled. */
  done: () => void;
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
  const maxQueuedLength = options.maxQueuedLength ?? 64 * 1024 * 1024;
  const url = options.workerUrl ?? new URL("./classify-worker.js", import.meta.url);
  const slots = new Set<Slot>();
  const queue: Job[] = [];
  let pendingLength = 0;
  let nextId = 1;
  let closed = false;

  /** Settles a job (once) and releases what it counted. */
  function settle(job: Job, outcome: { result: Classification } | { error: Error }): void {
    job.done();
    pendingLength -= job.text.length;
    if ("result" in outcome) job.resolve(outcome.result);
    else job.reject(outcome.error);
  }

  function start(): Slot {
    // Not kept alive by its worker: the process exits when its own work is done. No heap limit of
    // its own: V8 aborts the whole process when a worker reaches its limit inside WebAssembly
    // (measured: a 20 MiB IN list under a 512 MiB limit); the proxy bounds the texts it parses.
    const worker = new Worker(url, { resourceLimits: { stackSizeMb: WORKER_STACK_MB } });
    worker.unref();
    const slot: Slot = { worker, job: undefined, idle: undefined };
    const lost = (why: string) => {
      if (!slots.delete(slot)) return;
      clearTimeout(slot.idle);
      const job = slot.job;
      slot.job = undefined;
      if (job) settle(job, { error: new Error(why) });
      void worker.terminate();
      dispatch();
    };
    worker.on("message", (reply: WorkerReply) => {
      const job = slot.job;
      if (job === undefined || reply.id !== job.id) return lost("the classifier worker answered out of turn");
      slot.job = undefined;
      settle(job, "result" in reply ? { result: reply.result } : { error: new Error(reply.error) });
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
    while (queue.length > 0 && slots.size < max) {
      const job = queue.shift() as Job;
      let slot: Slot;
      try {
        slot = start();
      } catch (error) {
        // A thread that cannot start (out of memory, a process limit) fails this text, not the caller.
        settle(job, { error: new Error(`could not start a classifier worker: ${(error as Error).message}`) });
        continue;
      }
      send(slot, job);
    }
  }

  /** The caller went away: a queued job is dropped, a running one stops its worker. */
  function abort(job: Job): void {
    const queued = queue.indexOf(job);
    if (queued >= 0) {
      queue.splice(queued, 1);
      settle(job, { error: new Error("the classification was cancelled") });
      return;
    }
    for (const slot of slots) {
      if (slot.job !== job) continue;
      slot.job = undefined;
      slots.delete(slot);
      clearTimeout(slot.idle);
      void slot.worker.terminate();
      settle(job, { error: new Error("the classification was cancelled") });
      dispatch();
      return;
    }
  }

  return {
    classify(text, lexical, signal) {
      if (closed) return Promise.reject(new Error("the classifier pool is closed"));
      if (signal?.aborted) return Promise.reject(new Error("the classification was cancelled"));
      if (pendingLength + text.length > maxQueuedLength && pendingLength > 0)
        return Promise.reject(
          Object.assign(new Error(`${pendingLength} characters of text are already waiting to be classified`), {
            code: POOL_BUSY,
          }),
        );
      return new Promise<Classification>((resolve, reject) => {
        const job: Job = {
          id: nextId++,
          text,
          scs: lexical.standardConformingStrings === true,
          resolve,
          reject,
          done: () => undefined,
        };
        if (signal) {
          const onAbort = () => abort(job);
          signal.addEventListener("abort", onAbort, { once: true });
          job.done = () => signal.removeEventListener("abort", onAbort);
        }
        pendingLength += text.length;
        queue.push(job);
        dispatch();
      });
    },
    get pending() {
      let running = 0;
      for (const slot of slots) if (slot.job !== undefined) running++;
      return queue.length + running;
    },
    get pendingLength() {
      return pendingLength;
    },
    get workers() {
      return slots.size;
    },
    async close() {
      closed = true;
      const error = new Error("the classifier pool is closed");
      for (const job of queue.splice(0)) settle(job, { error });
      const stopping: Promise<number>[] = [];
      for (const slot of [...slots]) {
        slots.delete(slot);
        clearTimeout(slot.idle);
        const job = slot.job;
        slot.job = undefined;
        if (job) settle(job, { error });
        stopping.push(slot.worker.terminate());
      }
      await Promise.all(stopping);
    },
  };
}
