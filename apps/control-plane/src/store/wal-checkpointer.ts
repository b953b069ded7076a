/**
 * SQLite WAL checkpoints off the event loop. A checkpoint copies the write-ahead log into the
 * database file and fsyncs it; done by the writing connection (SQLite's default, every 1000 pages)
 * it stalls the control plane's only thread for tens of milliseconds each time and took about a
 * third of the time of audit ingestion. Here a worker thread with its own connection runs PASSIVE
 * checkpoints (they never block writers) every `intervalMs`. Under sustained writes a passive
 * checkpoint never catches up with the end of the log, so the log would grow without bound: a writer
 * calls `makeRoom()` before each transaction, and when the log has passed `maxLogBytes` it waits
 * (asynchronously: the event loop runs on) while the worker runs a TRUNCATE checkpoint, which empties
 * the log. The store's connections turn their automatic checkpoints off while this runs, and back on
 * if the worker fails.
 */
import { statSync } from "node:fs";
import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";

export interface WalCheckpointer {
  /** The worker could not start or died (`onFailure` has run). */
  readonly failed: boolean;
  /** When the log has grown past its limit, has the worker empty it (writers wait meanwhile). */
  makeRoom(): Promise<void>;
  /** Stops the worker after a last passive checkpoint. */
  close(): Promise<void>;
}

// CommonJS, evaluated in the worker: the driver is loaded by the path resolved here, so the worker
// needs no module resolution of its own (it runs from dist/ and from the TypeScript sources in tests).
const WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
const Database = require(workerData.driver);
const db = new Database(workerData.file, { timeout: workerData.busyTimeoutMs });
let stopping = false;
let timer;
const checkpoint = (mode) => {
  try {
    db.pragma("wal_checkpoint(" + mode + ")");
  } catch (error) {
    parentPort.postMessage({ error: String(error && error.message || error) });
  }
};
const tick = () => {
  if (stopping) return;
  checkpoint("PASSIVE");
  timer = setTimeout(tick, workerData.intervalMs);
};
parentPort.on("message", (message) => {
  if (message === "truncate") {
    if (!stopping) checkpoint("TRUNCATE");
    parentPort.postMessage("truncated");
    return;
  }
  if (message !== "stop") return;
  stopping = true;
  clearTimeout(timer);
  checkpoint("PASSIVE");
  db.close();
  parentPort.postMessage("stopped");
});
parentPort.postMessage("ready");
tick();
`;

/**
 * Starts the checkpointer for the SQLite database at `file`; `onFailure` runs (once) if the worker
 * cannot start or dies, so the caller can turn automatic checkpoints back on.
 */
export async function startWalCheckpointer(
  file: string,
  options: { intervalMs?: number; maxLogBytes?: number; onFailure: (error: Error) => void },
): Promise<WalCheckpointer> {
  const maxLogBytes = options.maxLogBytes ?? 128 * 1024 * 1024;
  const worker = new Worker(WORKER, {
    eval: true,
    workerData: {
      file,
      driver: createRequire(import.meta.url).resolve("better-sqlite3"),
      intervalMs: options.intervalMs ?? 50,
      busyTimeoutMs: 5000,
    },
  });
  worker.unref();
  let failed = false;
  let closing = false;
  const fail = (error: Error) => {
    if (failed || closing) return;
    failed = true;
    options.onFailure(error);
  };
  worker.on("error", fail);
  worker.on("exit", (code) => fail(new Error(`the WAL checkpoint worker exited (${code})`)));
  await new Promise<void>((resolve) => {
    const onMessage = (message: unknown) => {
      if (message !== "ready") return;
      worker.off("message", onMessage);
      resolve();
    };
    worker.on("message", onMessage);
    worker.once("error", () => resolve());
    worker.once("exit", () => resolve());
  });
  let truncating: Promise<void> | undefined;
  return {
    get failed() {
      return failed;
    },
    makeRoom() {
      if (failed || closing) return Promise.resolve();
      if (truncating) return truncating;
      let size = 0;
      try {
        size = statSync(`${file}-wal`).size;
      } catch {
        return Promise.resolve();
      }
      if (size <= maxLogBytes) return Promise.resolve();
      truncating = new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          worker.off("message", onMessage);
          worker.off("exit", done);
          truncating = undefined;
          resolve();
        };
        const onMessage = (message: unknown) => {
          if (message === "truncated") done();
        };
        // Never wait forever: a checkpoint stuck behind a reader gives up on its busy timeout anyway.
        const timer = setTimeout(done, 10_000);
        worker.on("message", onMessage);
        worker.once("exit", done);
        worker.postMessage("truncate");
      });
      return truncating;
    },
    async close() {
      if (closing || failed) return;
      closing = true;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => void worker.terminate().then(() => resolve()), 5000);
        worker.on("message", (message) => {
          if (message !== "stopped") return;
          clearTimeout(timer);
          void worker.terminate().then(() => resolve());
        });
        worker.once("exit", () => {
          clearTimeout(timer);
          resolve();
        });
        worker.postMessage("stop");
      });
    },
  };
}
