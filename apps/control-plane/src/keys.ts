/**
 * Signing keys of the control plane: Ed25519 keys for bundles and for access tokens, kept in the
 * store with their private halves encrypted (AES-256-GCM) under the master key, so a database dump
 * alone signs nothing. Created on first need. Token keys: the newest key published long enough
 * signs. Bundle keys: the bundle service picks, per agent, the newest key the agent is known to
 * trust (see services/bundles.ts); the others stay published until the grace period retires them.
 *
 * The master key comes from MOAT_MASTER_KEY (base64, 32 bytes; the same on every replica) or, on
 * the embedded default, from <dataDir>/master.key (created on first start, mode 0600).
 */
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  generateKeyPairSync,
  randomBytes,
  sign as cryptoSign,
  type KeyObject,
} from "node:crypto";
import { randomId } from "@moat/common";
import type { SigningKeyRecord, Store } from "./store/index.js";

export type KeyUse = "bundle" | "token";

export interface PublicKeyInfo {
  kid: string;
  algorithm: "EdDSA";
  /** The public key as a JWK (OKP, Ed25519). */
  jwk: Record<string, string>;
}

export interface Signer {
  kid: string;
  privateKey: KeyObject;
  sign(data: Uint8Array): Buffer;
}

export interface Keyring {
  /** The key that signs now: for tokens, the newest published long enough; for bundles, the newest. */
  signer(use: KeyUse): Promise<Signer>;
  /** The signer of one active key (bundles: the key chosen for an agent); throws when it is not active. */
  signerFor(use: KeyUse, kid: string): Promise<Signer>;
  /** Active keys, oldest first. */
  publicKeys(use: KeyUse): Promise<PublicKeyInfo[]>;
  /**
   * Adds a new signing key, published at once (bundles carry every active key). A token key signs
   * only after `activationDelayMs`, so agents know it before the first token it signs arrives; a
   * bundle key signs an agent's bundles once the agent has acknowledged a bundle carrying it.
   * Older keys are retired `retireAfterMs` (tokens) or `bundleRetireAfterMs` (bundles) later.
   */
  rotate(use: KeyUse): Promise<{ kid: string; signsFrom: Date; retiresOthersAt: Date }>;
  /** Retires keys that are no longer needed (older than the newest by the use's grace period). */
  retireExpired(use: KeyUse): Promise<string[]>;
}

/** Reads or creates the master key; throws when MOAT_MASTER_KEY is malformed. */
export function loadMasterKey(dataDir: string, fromEnv: string | undefined): Buffer {
  if (fromEnv) {
    const key = Buffer.from(fromEnv, "base64");
    if (key.length !== 32)
      throw new Error("MOAT_MASTER_KEY must be 32 bytes, base64-encoded (openssl rand -base64 32)");
    return key;
  }
  const path = join(dataDir, "master.key");
  if (existsSync(path)) {
    const key = Buffer.from(readFileSync(path, "utf8").trim(), "base64");
    if (key.length !== 32) throw new Error(`${path} is damaged (expected 32 bytes, base64)`);
    return key;
  }
  const key = randomBytes(32);
  writeFileSync(path, key.toString("base64") + "\n", { mode: 0o600 });
  chmodSync(path, 0o600);
  return key;
}

function seal(masterKey: Buffer, plaintext: Buffer, aad: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", masterKey, iv);
  cipher.setAAD(Buffer.from(aad));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return `v1:${Buffer.concat([iv, cipher.getAuthTag(), body]).toString("base64")}`;
}

function open(masterKey: Buffer, sealed: string, aad: string): Buffer {
  if (!sealed.startsWith("v1:")) throw new Error("unknown key encryption format");
  const raw = Buffer.from(sealed.slice(3), "base64");
  const decipher = createDecipheriv("aes-256-gcm", masterKey, raw.subarray(0, 12));
  decipher.setAAD(Buffer.from(aad));
  decipher.setAuthTag(raw.subarray(12, 28));
  try {
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]);
  } catch (error) {
    throw new Error("cannot decrypt a signing key: wrong master key (MOAT_MASTER_KEY / master.key)?", { cause: error });
  }
}

export function createKeyring(deps: {
  store: Pick<Store, "signingKeys" | "settings">;
  masterKey: Buffer;
  now?: () => Date;
  /** How long a rotated-in token key is published before it signs. */
  activationDelayMs?: number;
  /** How long a replaced token key stays published (the token lifetime plus margin). */
  retireAfterMs?: number;
  /**
   * How long a replaced bundle key stays published and usable: agents offline longer than this
   * since the rotation cannot verify the next bundle and must be re-enrolled.
   */
  bundleRetireAfterMs?: number;
}): Keyring {
  const { store, masterKey } = deps;
  const now = deps.now ?? (() => new Date());
  const activationDelayMs = deps.activationDelayMs ?? 10_000;
  const retireAfterMs = deps.retireAfterMs ?? 3_600_000;
  const bundleRetireAfterMs = deps.bundleRetireAfterMs ?? 7 * 86_400_000;
  const signers = new Map<string, Signer>();

  const creating = new Map<KeyUse, Promise<void>>();

  /** Creates the first key of `use`. Its id is `<use>-1`, so concurrent creators (replicas) cannot both win. */
  /**
   * Creates the first key of `use`. Replicas agree on its id through a first-writer-wins setting;
   * `takeOver` lets a replica write the key under the agreed id when its creator never did (it
   * crashed in between): the id is the primary key, so at most one such write succeeds.
   */
  async function createFirstKey(use: KeyUse, takeOver: boolean): Promise<void> {
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const proposed = `${use}-1-${randomId(8)}`;
    const kid = await store.settings.setIfAbsent(`signing-key.${use}.first`, proposed);
    if (kid !== proposed && !takeOver) return; // another replica is creating it
    const der = privateKey.export({ format: "der", type: "pkcs8" });
    try {
      await store.signingKeys.create({
        id: kid,
        use,
        algorithm: "EdDSA",
        publicJwk: JSON.stringify({ ...publicKey.export({ format: "jwk" }), kid, alg: "EdDSA", use: "sig" }),
        privateKeyEnc: seal(masterKey, der, `${kid}:${use}`),
      });
    } catch (error) {
      if ((error as { code?: string }).code !== "P2002") throw error; // P2002: someone else wrote it
    }
  }

  async function activeRecords(use: KeyUse) {
    for (let attempt = 0; attempt < 50; attempt++) {
      const records = await store.signingKeys.listActive(use);
      if (records.length > 0) return records;
      let pending = creating.get(use);
      if (!pending) {
        // After a few seconds without the creator's key, take over (it crashed mid-way).
        pending = createFirstKey(use, attempt >= 40).finally(() => creating.delete(use));
        creating.set(use, pending);
      }
      await pending;
      if (attempt > 0) await new Promise((r) => setTimeout(r, 50)); // another replica is writing it
    }
    throw new Error(`no ${use} signing key could be created`);
  }

  function signerOf(record: SigningKeyRecord, use: KeyUse): Signer {
    let signer = signers.get(record.id);
    if (!signer) {
      const privateKey = createPrivateKey({
        key: open(masterKey, record.privateKeyEnc, `${record.id}:${use}`),
        format: "der",
        type: "pkcs8",
      });
      const created: Signer = { kid: record.id, privateKey, sign: (data) => cryptoSign(null, data, privateKey) };
      signers.set(record.id, created);
      signer = created;
    }
    return signer;
  }

  return {
    async signer(use) {
      const records = await activeRecords(use);
      // Tokens: the newest key that has been published long enough; the first key signs at once.
      // Bundles: the newest (agents that do not know it yet get bundles signed by a key they trust).
      const ready =
        use === "bundle"
          ? records
          : records.filter((r, i) => i === 0 || now().getTime() - r.createdAt.getTime() >= activationDelayMs);
      const record = ready[ready.length - 1];
      if (!record) throw new Error(`no ${use} signing key`);
      return signerOf(record, use);
    },

    async signerFor(use, kid) {
      const record = (await activeRecords(use)).find((r) => r.id === kid);
      if (!record) throw new Error(`the ${use} key ${kid} is not active`);
      return signerOf(record, use);
    },

    async rotate(use) {
      const existing = await store.signingKeys.listAll(use);
      const { publicKey, privateKey } = generateKeyPairSync("ed25519");
      const kid = `${use}-${existing.length + 1}-${randomId(8)}`;
      await store.signingKeys.create({
        id: kid,
        use,
        algorithm: "EdDSA",
        publicJwk: JSON.stringify({ ...publicKey.export({ format: "jwk" }), kid, alg: "EdDSA", use: "sig" }),
        privateKeyEnc: seal(masterKey, privateKey.export({ format: "der", type: "pkcs8" }), `${kid}:${use}`),
      });
      const at = now().getTime();
      return use === "bundle"
        ? { kid, signsFrom: new Date(at), retiresOthersAt: new Date(at + bundleRetireAfterMs) }
        : {
            kid,
            signsFrom: new Date(at + activationDelayMs),
            retiresOthersAt: new Date(at + activationDelayMs + retireAfterMs),
          };
    },

    async retireExpired(use) {
      const records = await store.signingKeys.listActive(use);
      const signing = await this.signer(use);
      const signingRecord = records.find((r) => r.id === signing.kid);
      if (!signingRecord) return [];
      // Tokens signed by an older key expire at most a token lifetime after the current one took
      // over; an agent needs an older bundle key until it has acknowledged the newest one, which
      // the grace period bounds.
      const takeover = signingRecord.createdAt.getTime() + (use === "token" ? activationDelayMs : 0);
      const grace = use === "token" ? retireAfterMs : bundleRetireAfterMs;
      const retired: string[] = [];
      for (const r of records) {
        if (r.createdAt < signingRecord.createdAt && now().getTime() - takeover > grace) {
          await store.signingKeys.retire(r.id, now());
          retired.push(r.id);
        }
      }
      return retired;
    },

    async publicKeys(use) {
      return (await activeRecords(use)).map((r) => ({
        kid: r.id,
        algorithm: "EdDSA" as const,
        jwk: JSON.parse(r.publicJwk) as Record<string, string>,
      }));
    },
  };
}
