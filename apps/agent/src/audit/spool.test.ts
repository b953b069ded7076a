import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  appendFileSync,
  closeSync,
  mkdirSync,
  openSync,
  readdirSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { tempDir } from "@moat/testkit";
import { AuditSpool, SpoolFullError } from "./spool.js";
import { createUlidFactory } from "@moat/common";

const payload = (seq: bigint, size = 20) => Buffer.from(`event-${seq}-`.padEnd(size, "x"));

async function fill(spool: AuditSpool, n: number, size = 20): Promise<void> {
  for (let i = 0; i < n; i++) await spool.append((seq) => payload(seq, size));
}

describe("audit spool", () => {
  it("appends in order, reads back, survives a reopen with the same sequence", async () => {
    const dir = tempDir();
    const { spool, recovery } = AuditSpool.open({ dir });
    expect(recovery).toEqual({ truncatedBytes: 0, droppedSegments: 0, lastSeq: 0n, ackedSeq: 0n });
    await fill(spool, 10);
    expect(spool.read(1n, 100).map((e) => e.seq)).toEqual([1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n]);
    expect(Buffer.from(spool.read(4n, 1)[0]!.payload).toString()).toMatch(/^event-4-/);
    spool.close();
    const again = AuditSpool.open({ dir });
    expect(again.recovery.lastSeq).toBe(10n);
    expect((await again.spool.append((seq) => payload(seq))).seq).toBe(11n);
  });

  it("chains each event to the SHA-256 of the one before, across a reopen, and numbers past 2^32", async () => {
    const dir = tempDir();
    const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest();
    // A spool whose control plane has stored events up to 2^32 + 5: it goes on after that.
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "acked"), `${2n ** 32n + 5n}\n`);
    const { spool } = AuditSpool.open({ dir });
    expect(spool.lastHash).toHaveLength(0);
    const { seq } = spool.appendSoon((s) => payload(s));
    expect(seq).toBe(2n ** 32n + 6n);
    expect(Buffer.from(spool.lastHash)).toEqual(sha256(payload(seq)));
    expect(spool.lastHashLatin1).toBe(sha256(payload(seq)).toString("latin1"));
    await spool.append((s) => payload(s, 300));
    expect(Buffer.from(spool.lastHash)).toEqual(sha256(payload(seq + 1n, 300)));
    spool.close();
    const again = AuditSpool.open({ dir });
    expect(again.recovery.lastSeq).toBe(seq + 1n);
    expect(again.spool.read(seq, 10).map((e) => e.seq)).toEqual([seq, seq + 1n]);
    expect(Buffer.from(again.spool.lastHash)).toEqual(sha256(payload(seq + 1n, 300)));
    again.spool.close();
  });

  it("serves reads from memory and from segment files alike across arenas, tail trimming and acks", async () => {
    const dir = tempDir();
    const { spool } = AuditSpool.open({ dir, segmentBytes: 1024 * 1024 });
    // 60 000 events of ~200 bytes: several 256 KiB staging arenas, a tail that trims past 8 MiB
    // and compacts, a dozen segment files.
    const n = 60_000;
    for (let i = 0; i < n; i++) {
      spool.appendSoon((seq) => payload(seq, 150 + Number(seq % 100n)));
      if (i % 500 === 499) await new Promise((r) => setImmediate(r));
    }
    const check = (from: bigint, count: number) => {
      const got = spool.read(from, count);
      expect(got.map((e) => e.seq)).toEqual(Array.from({ length: count }, (_, i) => from + BigInt(i)));
      for (const e of got) expect(Buffer.from(e.payload).equals(payload(e.seq, 150 + Number(e.seq % 100n)))).toBe(true);
    };
    check(1n, 300); // long trimmed from memory: read back from the files
    check(30_000n, 300);
    check(BigInt(n) - 99n, 100); // the newest, from memory
    spool.ack(40_000n);
    check(40_001n, 500);
    expect(spool.read(BigInt(n) + 1n, 10)).toEqual([]);
    spool.close();
    const again = AuditSpool.open({ dir, segmentBytes: 1024 * 1024 });
    expect(again.recovery).toMatchObject({ truncatedBytes: 0, lastSeq: BigInt(n), ackedSeq: 40_000n });
    const after = again.spool.read(59_990n, 20);
    expect(after.map((e) => e.seq)).toEqual(Array.from({ length: 11 }, (_, i) => 59_990n + BigInt(i)));
    again.spool.close();
  });

  it("drains a backlog from the files batch after batch, across segments, restarts of the read and acks", async () => {
    const dir = tempDir();
    // Small segments: batches cross segment boundaries; a tail trimmed early: most reads hit the files.
    const { spool } = AuditSpool.open({ dir, segmentBytes: 64 * 1024 });
    const n = 40_000;
    const size = (seq: bigint) => 100 + Number((seq * 7919n) % 400n);
    for (let i = 0; i < n; i++) {
      spool.appendSoon((seq) => payload(seq, size(seq)));
      if (i % 500 === 499) await new Promise((r) => setImmediate(r));
    }
    const drain = (from: bigint, until: bigint, batch: number, maxBytes: number) => {
      const seen: bigint[] = [];
      for (let next = from; next <= until;) {
        const got = spool.read(next, batch, maxBytes);
        expect(got.length).toBeGreaterThan(0);
        let bytes = 0;
        for (const e of got) {
          expect(Buffer.from(e.payload).equals(payload(e.seq, size(e.seq)))).toBe(true);
          bytes += e.payload.length;
        }
        expect(got.length <= batch && (got.length === 1 || bytes <= maxBytes)).toBe(true);
        seen.push(...got.map((e) => e.seq));
        next = (got[got.length - 1] as { seq: bigint }).seq + 1n;
      }
      return seen.filter((s) => s <= until);
    };
    const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => BigInt(from + i));
    expect(drain(1n, 12_000n, 500, 1024 * 1024)).toEqual(range(1, 12_000));
    // Small byte budgets cut batches short of their count, in the middle of segments.
    expect(drain(12_001n, 15_000n, 500, 3000)).toEqual(range(12_001, 15_000));
    // A resend from an earlier point (a reconnect), then from a point in the middle of a segment.
    expect(drain(5_000n, 9_000n, 333, 1024 * 1024)).toEqual(range(5_000, 9_000));
    expect(drain(7_777n, 8_100n, 50, 1024 * 1024)).toEqual(range(7_777, 8_100));
    // Acks drop whole segments behind the reader; the drain goes on to the end (files, then memory).
    spool.ack(15_000n);
    expect(drain(15_001n, BigInt(n), 500, 1024 * 1024)).toEqual(range(15_001, n));
    expect(spool.read(BigInt(n) + 1n, 10)).toEqual([]);
    spool.close();
  });

  it("reports the age of the oldest unshipped event, from memory or from its segment after a restart", async () => {
    const dir = tempDir();
    const { spool } = AuditSpool.open({ dir, segmentBytes: 200 });
    expect(spool.oldestUnshippedAgeMs()).toBe(0);
    const t0 = Date.now();
    await fill(spool, 3);
    await new Promise((r) => setTimeout(r, 60));
    const t1 = Date.now();
    await fill(spool, 20);
    const age = spool.oldestUnshippedAgeMs();
    expect(age).toBeGreaterThanOrEqual(55);
    expect(age).toBeLessThanOrEqual(Date.now() - t0 + 5);
    spool.ack(3n); // the old ones are stored: the oldest left is from the second fill
    expect(spool.oldestUnshippedAgeMs()).toBeLessThanOrEqual(Date.now() - t1 + 5);
    expect(spool.oldestUnshippedAgeMs()).toBeLessThan(age);
    spool.ack(23n);
    expect(spool.oldestUnshippedAgeMs()).toBe(0);
    await fill(spool, 5);
    spool.close();
    await new Promise((r) => setTimeout(r, 60));
    const again = AuditSpool.open({ dir, segmentBytes: 200 });
    expect(again.spool.oldestUnshippedAgeMs()).toBeGreaterThanOrEqual(55); // from the segment file
    again.spool.close();
  });

  it("groups concurrent appends into few fsyncs and keeps every one", async () => {
    const { spool } = AuditSpool.open({ dir: tempDir() });
    const results = await Promise.all(Array.from({ length: 500 }, () => spool.append((seq) => payload(seq))));
    expect(results.map((r) => r.seq)).toEqual(Array.from({ length: 500 }, (_, i) => BigInt(i + 1)));
    expect(spool.read(1n, 1000)).toHaveLength(500);
  });

  it("rolls segments, trims only acknowledged ones, and remembers the ack", async () => {
    const dir = tempDir();
    const { spool } = AuditSpool.open({ dir, segmentBytes: 200 });
    await fill(spool, 30);
    const segments = () => readdirSync(dir).filter((n) => n.endsWith(".seg"));
    const before = segments().length;
    expect(before).toBeGreaterThan(3);
    spool.ack(12n);
    expect(segments().length).toBeLessThan(before);
    expect(spool.read(13n, 100).map((e) => e.seq)[0]).toBe(13n);
    expect(spool.unshipped).toBe(18n);
    spool.close();
    const again = AuditSpool.open({ dir, segmentBytes: 200 });
    expect(again.recovery.ackedSeq).toBe(12n);
    expect(again.spool.read(13n, 100)).toHaveLength(18);
  });

  it("truncates a torn tail to the last whole event and reports it", async () => {
    const dir = tempDir();
    const { spool } = AuditSpool.open({ dir });
    await fill(spool, 5);
    spool.close();
    const file = join(dir, readdirSync(dir).find((n) => n.endsWith(".seg")) as string);
    const size = statSync(file).size;
    appendFileSync(file, Buffer.from([40, 0, 0, 0, 1, 2, 3])); // a frame header cut short
    const again = AuditSpool.open({ dir });
    expect(again.recovery).toMatchObject({ truncatedBytes: 7, lastSeq: 5n });
    expect(statSync(file).size).toBe(size);
    expect((await again.spool.append((seq) => payload(seq))).seq).toBe(6n);
  });

  it("detects a corrupted event (checksum) and drops it and everything after", async () => {
    const dir = tempDir();
    const { spool } = AuditSpool.open({ dir });
    await fill(spool, 5);
    spool.close();
    const file = join(dir, readdirSync(dir).find((n) => n.endsWith(".seg")) as string);
    const frame = 16 + 20;
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.from("Y"), 0, 1, 3 * frame + 20); // inside event 4's payload
    closeSync(fd);
    const again = AuditSpool.open({ dir });
    expect(again.recovery).toMatchObject({ truncatedBytes: 2 * frame, lastSeq: 3n });
    expect(again.spool.read(1n, 10).map((e) => e.seq)).toEqual([1n, 2n, 3n]);
  });

  it("fails closed when full, or drops the oldest segment and reports the gap", async () => {
    const closed = AuditSpool.open({ dir: tempDir(), segmentBytes: 150, maxBytes: 400, whenFull: "fail-closed" }).spool;
    await expect(fill(closed, 20)).rejects.toBeInstanceOf(SpoolFullError);
    const before = closed.peekNextSeq();
    closed.ack(before - 1n);
    await expect(closed.append((seq) => payload(seq))).resolves.toMatchObject({ seq: before });

    const dropping = AuditSpool.open({
      dir: tempDir(),
      segmentBytes: 150,
      maxBytes: 400,
      whenFull: "drop-oldest",
    }).spool;
    const gaps = [];
    for (let i = 0; i < 20; i++) {
      const result = await dropping.append((seq) => payload(seq));
      if (result.gap) gaps.push(result.gap);
    }
    expect(gaps.length).toBeGreaterThan(0);
    expect(gaps[0]!.firstSeq).toBe(1n);
    expect(dropping.totalBytes).toBeLessThanOrEqual(400);
  });

  it("loses no acknowledged event when the process is killed with SIGKILL mid-burst", async () => {
    const dir = tempDir();
    const spoolModule = join(fileURLToPath(new URL(".", import.meta.url)), "..", "..", "dist", "audit", "spool.js");
    const script = `
      const { AuditSpool } = await import(${JSON.stringify(spoolModule)});
      const { spool } = AuditSpool.open({ dir: ${JSON.stringify(dir)}, segmentBytes: 4096 });
      for (let i = 0; ; i++) {
        const results = await Promise.all(Array.from({ length: 8 }, () => spool.append((seq) => Buffer.from("event-" + seq))));
        process.stdout.write(results.map((r) => r.seq).join("\\n") + "\\n");
      }`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise((r) => child.once("exit", r));
    let acknowledged = "";
    child.stdout.on("data", (c: Buffer) => (acknowledged += c.toString()));
    // Kill it once it has acknowledged a few hundred events (however slow the machine is today).
    const lines = () => acknowledged.split("\n").length - 1;
    for (let waited = 0; lines() < 300 && waited < 30_000 && child.exitCode === null; waited += 20)
      await new Promise((r) => setTimeout(r, 20));
    expect(child.exitCode).toBeNull(); // still appending: killed mid-burst, not after a crash
    child.kill("SIGKILL");
    await exited;
    const seen = acknowledged
      .split("\n")
      .filter((l) => /^\d+$/.test(l))
      .map(BigInt);
    expect(seen.length).toBeGreaterThan(100);
    const { spool, recovery } = AuditSpool.open({ dir, segmentBytes: 4096 });
    const stored = spool.read(1n, 1_000_000, 1 << 30);
    const storedSeqs = stored.map((e) => e.seq);
    expect(new Set(storedSeqs).size).toBe(storedSeqs.length);
    expect(storedSeqs).toEqual(storedSeqs.map((_, i) => BigInt(i + 1)));
    const max = seen.reduce((a, b) => (a > b ? a : b), 0n);
    expect(recovery.lastSeq).toBeGreaterThanOrEqual(max);
    for (const e of stored.slice(0, 50)) expect(Buffer.from(e.payload).toString()).toBe(`event-${e.seq}`);
  });
});

describe("ulid", () => {
  it("is 26 Crockford characters, time-ordered and unique", () => {
    let t = 1_700_000_000_000;
    const next = createUlidFactory(() => t);
    const a = next();
    const b = next();
    t++;
    const c = next();
    expect(a).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(a < b && b < c).toBe(true);
    expect(new Set(Array.from({ length: 1000 }, next)).size).toBe(1000);
  });
});
