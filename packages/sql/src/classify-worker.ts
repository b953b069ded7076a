/**
 * The worker thread of a classifier pool (classifier-pool.ts): loads its own parser, then classifies
 * each text it is sent with classifyText, one at a time, and answers with the result or the error.
 */
import { parentPort } from "node:worker_threads";
import { classifyText } from "./classifier.js";
import type { WorkerReply, WorkerRequest } from "./classifier-pool.js";
import { loadSqlParser } from "./parser.js";

const port = parentPort;
if (port === null) throw new Error("classify-worker.js runs as a worker thread of a classifier pool");
await loadSqlParser();
port.on("message", (request: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    reply = {
      id: request.id,
      result: classifyText(request.text, { standardConformingStrings: request.standardConformingStrings }),
    };
  } catch (error) {
    reply = { id: request.id, error: error instanceof Error ? error.message : String(error) };
  }
  port.postMessage(reply);
});
