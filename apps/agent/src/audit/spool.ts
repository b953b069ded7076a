/**
 * The agent's durable audit spool: an append-only log of audit events in segment files, so that
 * nothing the agent has acknowledged to a user is lost while the control plane is away, or when
 * either side is killed.
 *
 * Frame: u32 LE payload length | u32 LE CRC-32 of (seq || payload) | u64 LE seq | payload (an
 * AuditEvent, protobuf). Segment files are named by their first seq. Opening the spool validates
 * every frame; a torn or corrupt tail (a crash mid-write) is truncated to the last whole frame and
 * reported. Durability: `append` resolves only after the frame is fsynced; appends that arrive
 * while an fsync runs are committed together by the next one (group commit). Events are trimmed
 * only when acknowledged by the control plane (`ack`).
 */
import {
  closeSync,
  existsSync,
  fsync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  renameSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { hash } from "node:crypto";
import { crc32 } from "node:zlib";

const HEADER = 16;
/** How often at most the acked sequence number is written to its file. */
const ACK_PERSIST_MS = 1000;
/**
 * SHA-256 of an event's bytes (one-shot: no Hash object per event). Asked for as a "binary"
 * (latin1) string and turned into bytes here: Node 20's `hash(..., "buffer")` costs ~2.4 µs a call
 * against ~1 µs this way, measured on our machines for 300-byte events.
 */
function sha256(bytes: Uint8Array): string {
  return hash("sha256", bytes, "binary");
}
/** Size of the buffers frames are staged in (a bigger frame gets an arena of its own). */
const ARENA_BYTES = 256 * 1024;
/** Largest single event accepted (a query text is capped well below this by the enforcer). */
export const MAX_EVENT_BYTES = 1024 * 1024;
/** Events written with `appendSoon` are fsynced within this delay. */
export const SYNC_DELAY_MS = 5;
/** Latest events kept in memory for shipping. */
const TAIL_BYTES = 8 * 1024 * 1024;

export type WhenFull = "fail-closed" | "drop-oldest";

export interface SpoolOptions {
  dir: string;
  /** Start a new segment file after this many bytes. */
  segmentBytes?: number;
  /** Total spool size limit. */
  maxBytes?: number;
  whenFull?: WhenFull;
}

export interface SpooledEvent {
  seq: bigint;
  payload: Uint8Array;
}

export interface Recovery {
  /** Bytes cut from a torn or corrupt tail (0 when the spool was clean). */
  truncatedBytes: number;
  /** Segment files removed because they followed a corrupt frame. */
  droppedSegments: number;
  lastSeq: bigint;
  ackedSeq: bigint;
}

/** Events dropped to make room (drop-oldest); the caller records them as an audit gap. */
export interface Gap {
  firstSeq: bigint;
  lastSeq: bigint;
}

export class SpoolFullError extends Error {
  constructor(maxBytes: number) {
    super(`the audit spool is full (${maxBytes} bytes of events not yet shipped to the control plane)`);
    this.name = "SpoolFullError";
  }
}

interface Segment {
  firstSeq: bigint;
  path: string;
  bytes: number;
  lastSeq: bigint;
  /** When its first event was written (ms since the epoch; from the file's times after a restart). */
  firstAt: number;
}

/** An event of the in-memory tail, with when it was written. */
interface TailEvent extends SpooledEvent {
  at: number;
}

function segmentName(firstSeq: bigint): string {
  return `${firstSeq.toString().padStart(20, "0")}.seg`;
}

/** `length` bytes of the file at `path` from `position`. */
function readChunk(path: string, position: number, length: number): Buffer {
  const buffer = Buffer.allocUnsafe(length);
  const fd = openSync(path, "r");
  try {
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buffer, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return buffer.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

function frameCrc(seqAndPayload: Uint8Array): number {
  return crc32(seqAndPayload) >>> 0;
}

/** Parses the frames of one segment; stops at the first torn or corrupt one. */
function scan(
  buffer: Buffer,
  visit?: (seq: bigint, payload: Buffer, end: number) => void,
): { goodBytes: number; lastSeq: bigint | undefined; count: number } {
  let offset = 0;
  let lastSeq: bigint | undefined;
  let count = 0;
  while (offset + HEADER <= buffer.length) {
    const length = buffer.readUInt32LE(offset);
    if (length > MAX_EVENT_BYTES || offset + HEADER + length > buffer.length) break;
    const crc = buffer.readUInt32LE(offset + 4);
    const body = buffer.subarray(offset + 8, offset + HEADER + length);
    if (frameCrc(body) !== crc) break;
    const seq = buffer.readBigUInt64LE(offset + 8);
    if (lastSeq !== undefined && seq !== lastSeq + 1n) break;
    visit?.(seq, buffer.subarray(offset + HEADER, offset + HEADER + length), offset + HEADER + length);
    lastSeq = seq;
    count++;
    offset += HEADER + length;
  }
  return { goodBytes: offset, lastSeq, count };
}

export class AuditSpool {
  private segments: Segment[] = [];
  /**
   * Frames are built in place in an arena: `arena[written, pos)` is staged (numbered and chained,
   * written to the file at the end of the turn in one call). The in-memory tail holds slices of
   * arenas, so a full arena is replaced, never reused.
   */
  private arena = Buffer.allocUnsafe(ARENA_BYTES);
  private arenaPos = 0;
  private arenaWritten = 0;
  private writeScheduled = false;
  private dirty = false;
  private syncTimer: NodeJS.Timeout | undefined;
  /** Bytes of all segments (kept, not recomputed per append). */
  private bytes = 0;
  /** The latest events in memory, so shipping rarely reads segment files back: `tail[tailHead..]`. */
  private tail: (TailEvent | undefined)[] = [];
  private tailHead = 0;
  private tailBytes = 0;
  private fd = -1;
  private nextSeq = 1n;
  private acked = 0n;
  /** What the acked file says (it may lag `acked`: see schedulePersistAck). */
  private ackPersisted = 0n;
  private ackTimer: NodeJS.Timeout | undefined;
  private syncing = false;
  private waiting: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private closed = false;
  /**
   * SHA-256 of the last event written (the next event's `prev_hash`), as a latin1 string (one char
   * per byte: no Buffer per event); empty before the first. `lastHash` makes the bytes on demand.
   */
  private lastPayloadHash = "";
  private lastHashBytes: Uint8Array | undefined;
  /** Descriptors of finished segments, closed once no fsync is in flight. */
  private retired: number[] = [];
  private readonly segmentBytes: number;
  private readonly maxBytes: number;
  private readonly whenFull: WhenFull;

  private constructor(
    private readonly dir: string,
    options: SpoolOptions,
  ) {
    this.segmentBytes = options.segmentBytes ?? 4 * 1024 * 1024;
    this.maxBytes = options.maxBytes ?? 256 * 1024 * 1024;
    this.whenFull = options.whenFull ?? "fail-closed";
  }

  /** Opens (creating or recovering) the spool in `options.dir`. */
  static open(options: SpoolOptions): { spool: AuditSpool; recovery: Recovery } {
    mkdirSync(options.dir, { recursive: true, mode: 0o700 });
    const spool = new AuditSpool(options.dir, options);
    const recovery = spool.recover();
    return { spool, recovery };
  }

  private ackPath(): string {
    return join(this.dir, "acked");
  }

  private recover(): Recovery {
    const ackText = existsSync(this.ackPath()) ? readFileSync(this.ackPath(), "utf8").trim() : "0";
    this.acked = /^\d+$/.test(ackText) ? BigInt(ackText) : 0n;
    this.ackPersisted = this.acked;
    const names = readdirSync(this.dir)
      .filter((n) => /^\d{20}\.seg$/.test(n))
      .sort();
    let truncatedBytes = 0;
    let droppedSegments = 0;
    let corrupt = false;
    for (const name of names) {
      const path = join(this.dir, name);
      if (corrupt) {
        // Everything after a corrupt frame is suspect (its order and chain cannot be checked).
        unlinkSync(path);
        droppedSegments++;
        continue;
      }
      const firstSeq = BigInt(name.slice(0, 20));
      const previous = this.segments[this.segments.length - 1];
      const buffer = readFileSync(path);
      let first: bigint | undefined;
      const result = scan(buffer, (seq) => (first ??= seq));
      const misplaced =
        first !== undefined && (first !== firstSeq || (previous !== undefined && first !== previous.lastSeq + 1n));
      if (misplaced || result.goodBytes < buffer.length) {
        corrupt = true;
        truncatedBytes += misplaced ? buffer.length : buffer.length - result.goodBytes;
      }
      if (misplaced || result.count === 0) {
        unlinkSync(path);
        if (misplaced) droppedSegments++;
        continue;
      }
      if (result.goodBytes < buffer.length) {
        const fd = openSync(path, "r+");
        ftruncateSync(fd, result.goodBytes);
        closeSync(fd);
      }
      const times = statSync(path);
      const firstAt = Math.min(times.birthtimeMs || times.mtimeMs, times.mtimeMs);
      this.segments.push({ firstSeq, path, bytes: result.goodBytes, lastSeq: result.lastSeq as bigint, firstAt });
    }
    const last = this.segments[this.segments.length - 1];
    if (last) {
      scan(readFileSync(last.path).subarray(0, last.bytes), (_seq, payload) => {
        this.lastPayloadHash = sha256(payload);
        this.lastHashBytes = undefined;
      });
    }
    this.nextSeq = last ? last.lastSeq + 1n : this.acked + 1n;
    if (this.nextSeq <= this.acked) this.nextSeq = this.acked + 1n;
    if (last) this.fd = openSync(last.path, "a");
    this.bytes = this.segments.reduce((n, seg) => n + seg.bytes, 0);
    return { truncatedBytes, droppedSegments, lastSeq: this.nextSeq - 1n, ackedSeq: this.acked };
  }

  /** Sequence number the next appended event gets. */
  peekNextSeq(): bigint {
    return this.nextSeq;
  }

  /** SHA-256 of the last event in the spool, for the hash chain (survives restarts). */
  get lastHash(): Uint8Array {
    this.lastHashBytes ??= Buffer.from(this.lastPayloadHash, "latin1");
    return this.lastHashBytes;
  }

  /** `lastHash` as a latin1 string (one char per byte), for encoders that copy it themselves. */
  get lastHashLatin1(): string {
    return this.lastPayloadHash;
  }

  /** Called after each batch `appendSoon` staged reaches the file (the shipper's wake-up). */
  onWritten: (() => void) | undefined;

  get ackedSeq(): bigint {
    return this.acked;
  }

  get totalBytes(): number {
    return this.bytes;
  }

  /**
   * Age in ms of the oldest event the control plane has not acknowledged (0 when none): exact for
   * events still in memory, else from when its segment file was started (an upper bound).
   */
  oldestUnshippedAgeMs(now = Date.now()): number {
    if (this.unshipped <= 0n) return 0;
    const oldest = this.acked + 1n;
    const first = this.tailFirst();
    if (first && oldest >= first.seq) {
      const e = this.tail[this.tailHead + Number(oldest - first.seq)];
      if (e) return Math.max(0, now - e.at);
    }
    const segment = this.segments.find((seg) => seg.lastSeq >= oldest);
    return segment ? Math.max(0, now - segment.firstAt) : 0;
  }

  /** Whether `bytes` more can be appended now: always with drop-oldest, else within `maxBytes`. */
  hasRoom(bytes = 64 * 1024): boolean {
    return this.whenFull === "drop-oldest" || this.bytes + HEADER + bytes <= this.maxBytes;
  }

  /** Events appended but not yet acknowledged by the control plane. */
  get unshipped(): bigint {
    return this.nextSeq - 1n - this.acked;
  }

  /**
   * Appends one serialized event at sequence `peekNextSeq()` (the caller builds the event with
   * it). Returns once the event is on disk (fsync), plus any events dropped to make room.
   */
  async append(build: (seq: bigint) => Uint8Array): Promise<{ seq: bigint; gap?: Gap }> {
    const result = this.stage(build);
    this.writeStaged();
    await this.sync();
    return result;
  }

  /**
   * Appends like `append` but without waiting: the event is written to the segment file in a batch
   * at the end of the current event-loop turn (one write for every event staged in that turn, by all
   * sessions) and fsynced within `SYNC_DELAY_MS` by a group commit. For high-rate events (one per
   * statement) whose response must not wait for the disk. Throws SpoolFullError like `append`.
   */
  appendSoon(build: (seq: bigint) => Uint8Array): { seq: bigint; gap?: Gap } {
    const result = this.stage(build);
    if (!this.writeScheduled) {
      this.writeScheduled = true;
      setImmediate(() => {
        this.writeScheduled = false;
        if (!this.closed) this.writeStaged();
        this.syncSoon();
        this.onWritten?.();
      });
    }
    return result;
  }

  /** Numbers, frames and chains one event; the bytes reach the file with `writeStaged`. */
  private stage(build: (seq: bigint) => Uint8Array): { seq: bigint; gap?: Gap } {
    if (this.closed) throw new Error("the audit spool is closed");
    const seq = this.nextSeq;
    const payload = build(seq);
    if (payload.length > MAX_EVENT_BYTES)
      throw new Error(`audit event of ${payload.length} bytes is over the ${MAX_EVENT_BYTES}-byte limit`);
    const frameBytes = HEADER + payload.length;
    let gap: Gap | undefined;
    while (this.totalBytes + frameBytes > this.maxBytes) {
      if (this.whenFull === "fail-closed" || this.segments.length <= 1) throw new SpoolFullError(this.maxBytes);
      this.writeStaged();
      const oldest = this.segments.shift() as Segment;
      unlinkSync(oldest.path);
      this.bytes -= oldest.bytes;
      gap = { firstSeq: gap?.firstSeq ?? oldest.firstSeq, lastSeq: oldest.lastSeq };
      if (this.acked < oldest.lastSeq) this.persistAck(oldest.lastSeq);
      this.dropTail(oldest.lastSeq);
    }
    let current = this.segments[this.segments.length - 1];
    if (!current || current.bytes + frameBytes > this.segmentBytes) {
      this.writeStaged();
      if (this.fd >= 0) {
        // Appends waiting for a group commit may be in this file: make them durable now, and close
        // it only when no asynchronous fsync can still be using the descriptor.
        fsyncSync(this.fd);
        this.retired.push(this.fd);
        this.closeRetired();
      }
      const path = join(this.dir, segmentName(seq));
      this.fd = openSync(path, "a", 0o600);
      current = { firstSeq: seq, path, bytes: 0, lastSeq: seq - 1n, firstAt: Date.now() };
      this.segments.push(current);
    }
    if (this.arenaPos + frameBytes > this.arena.length) {
      this.writeStaged();
      this.arena = Buffer.allocUnsafe(Math.max(ARENA_BYTES, frameBytes));
      this.arenaPos = 0;
      this.arenaWritten = 0;
    }
    const arena = this.arena;
    const start = this.arenaPos;
    const end = start + frameBytes;
    this.arenaPos = end;
    arena.writeUInt32LE(payload.length, start);
    // The sequence number as two 32-bit halves (a bigint write costs more; it stays below 2^53).
    const n = Number(seq);
    arena.writeUInt32LE(n % 0x1_0000_0000, start + 8);
    arena.writeUInt32LE(Math.floor(n / 0x1_0000_0000), start + 12);
    arena.set(payload, start + HEADER);
    arena.writeUInt32LE(frameCrc(arena.subarray(start + 8, end)), start + 4);
    const stored = arena.subarray(start + HEADER, end);
    this.lastPayloadHash = sha256(stored);
    this.lastHashBytes = undefined;
    current.bytes += frameBytes;
    current.lastSeq = seq;
    this.bytes += frameBytes;
    this.nextSeq = seq + 1n;
    this.tail.push({ seq, payload: stored, at: Date.now() });
    this.tailBytes += payload.length;
    while (this.tailBytes > TAIL_BYTES && this.tailLength() > 1) this.shiftTail();
    return gap ? { seq, gap } : { seq };
  }

  private tailLength(): number {
    return this.tail.length - this.tailHead;
  }

  private tailFirst(): TailEvent | undefined {
    return this.tail[this.tailHead];
  }

  /** Drops the oldest tail event (a queue: no O(n) `shift` on a long array). */
  private shiftTail(): void {
    const e = this.tail[this.tailHead] as SpooledEvent;
    this.tail[this.tailHead++] = undefined;
    this.tailBytes -= e.payload.length;
    if (this.tailHead === this.tail.length) {
      this.tail = [];
      this.tailHead = 0;
    } else if (this.tailHead >= 4096 && this.tailHead * 2 >= this.tail.length) {
      this.tail = this.tail.slice(this.tailHead);
      this.tailHead = 0;
    }
  }

  /** Writes every staged frame to the current segment in one call. */
  private writeStaged(): void {
    if (this.arenaPos === this.arenaWritten) return;
    const staged = this.arena.subarray(this.arenaWritten, this.arenaPos);
    this.arenaWritten = this.arenaPos;
    writeSync(this.fd, staged);
    this.dirty = true;
  }

  /** Schedules an fsync of what was written without one. */
  private syncSoon(): void {
    if (this.syncTimer || this.closed) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      if (this.dirty && !this.closed) void this.sync().catch(() => undefined);
    }, SYNC_DELAY_MS);
    this.syncTimer.unref();
  }

  private dropTail(uptoSeq: bigint): void {
    for (let e = this.tailFirst(); e !== undefined && e.seq <= uptoSeq; e = this.tailFirst()) this.shiftTail();
  }

  /** Group commit: one fsync covers every append made before it started. */
  private sync(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      if (!this.syncing) this.flush();
    });
  }

  private flush(): void {
    if (this.waiting.length === 0 || this.fd < 0) return;
    this.syncing = true;
    const batch = this.waiting;
    this.waiting = [];
    this.dirty = false;
    fsync(this.fd, (error) => {
      this.syncing = false;
      this.closeRetired();
      for (const w of batch) {
        if (error) w.reject(error);
        else w.resolve();
      }
      if (this.waiting.length > 0) this.flush();
    });
  }

  private closeRetired(): void {
    if (this.syncing) return;
    for (const fd of this.retired.splice(0)) closeSync(fd);
  }

  /**
   * Where the last read from the files stopped: the next frame of `segment` is at `offset` and
   * numbered `seq`. A backlog is read in order, so the next read usually starts there, and each read
   * costs what it returns, not the segment's size up to it.
   */
  private readCursor: { segment: Segment; offset: number; seq: bigint } | undefined;

  /** Up to `maxEvents` events (at most `maxBytes` in all) from `fromSeq` on, in order. */
  read(fromSeq: bigint, maxEvents: number, maxBytes = 4 * 1024 * 1024): SpooledEvent[] {
    const out: SpooledEvent[] = [];
    let bytes = 0;
    this.writeStaged(); // never ship an event before it is in the file
    const first = this.tailFirst();
    if (first && fromSeq >= first.seq) {
      for (let i = this.tailHead + Number(fromSeq - first.seq); i < this.tail.length; i++) {
        const e = this.tail[i] as SpooledEvent;
        if (out.length >= maxEvents || (out.length > 0 && bytes + e.payload.length > maxBytes)) break;
        out.push(e);
        bytes += e.payload.length;
      }
      return out;
    }
    let want = fromSeq;
    for (const segment of this.segments) {
      if (segment.lastSeq < want) continue;
      // Where `want` starts in this segment, when known without scanning the segment from its start.
      const cursor = this.readCursor;
      const known =
        cursor?.segment === segment && cursor.seq === want ? cursor.offset : want === segment.firstSeq ? 0 : undefined;
      let buffer: Buffer;
      let base: number;
      if (known !== undefined) {
        // One chunk: the batch's bytes and room for a whole frame more (the last one may be cut:
        // the scan stops before it, and the next read starts there).
        base = known;
        buffer = readChunk(segment.path, base, Math.min(segment.bytes - base, maxBytes + HEADER + MAX_EVENT_BYTES));
      } else {
        base = 0;
        buffer = readFileSync(segment.path).subarray(0, segment.bytes);
      }
      const whole = known === undefined; // payloads are copied out of a whole segment's buffer
      let full = false;
      let offset = base;
      scan(buffer, (seq, payload, end) => {
        if (full) return;
        if (seq < want) {
          offset = base + end;
          return;
        }
        if (out.length >= maxEvents || (out.length > 0 && bytes + payload.length > maxBytes)) {
          full = true;
          return;
        }
        // A chunk is this read's own buffer (never reused): its slices need no copy.
        out.push({ seq, payload: whole ? Uint8Array.from(payload) : payload });
        bytes += payload.length;
        offset = base + end;
        want = seq + 1n;
      });
      this.readCursor = { segment, offset, seq: want };
      if (full || out.length >= maxEvents || offset < segment.bytes) break;
    }
    return out;
  }

  /** The control plane stored everything up to `seq`: forget it (whole segments at a time). */
  ack(seq: bigint): void {
    if (seq <= this.acked) return;
    const upTo = seq > this.nextSeq - 1n ? this.nextSeq - 1n : seq;
    this.acked = upTo;
    this.dropTail(upTo);
    if (this.segments.length > 1 && (this.segments[0] as Segment).lastSeq <= this.acked) {
      // On disk before any segment goes, so the file never says less than the segments left imply.
      this.persistAck(upTo);
      while (this.segments.length > 1 && (this.segments[0] as Segment).lastSeq <= this.acked) {
        const gone = this.segments.shift() as Segment;
        this.bytes -= gone.bytes;
        unlinkSync(gone.path);
      }
    } else this.schedulePersistAck();
  }

  /**
   * The acked file is written at most every ACK_PERSIST_MS (and at close, and before a segment is
   * deleted): a write and a rename per ack blocked the event loop on a busy disk. A file that lags
   * only makes a restarted agent resend a few stored events (ingestion is idempotent), and on
   * reconnect the control plane says what it has stored anyway.
   */
  private schedulePersistAck(): void {
    if (this.ackTimer || this.closed) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      if (!this.closed && this.acked > this.ackPersisted) this.persistAck(this.acked);
    }, ACK_PERSIST_MS);
    this.ackTimer.unref();
  }

  private persistAck(seq: bigint): void {
    this.acked = seq;
    this.ackPersisted = seq;
    const temp = `${this.ackPath()}.tmp`;
    writeFileSync(temp, `${seq}\n`, { mode: 0o600 });
    renameSync(temp, this.ackPath());
  }

  close(): void {
    if (this.closed) return;
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    if (this.acked > this.ackPersisted) this.persistAck(this.acked);
    if (this.fd >= 0) this.writeStaged();
    if (this.syncTimer) clearTimeout(this.syncTimer);
    this.closed = true;
    if (this.fd >= 0) this.retired.push(this.fd);
    this.fd = -1;
    this.closeRetired(); // or, with an fsync in flight, when it completes
  }
}
