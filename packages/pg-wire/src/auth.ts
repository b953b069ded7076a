/**
 * Client side of PostgreSQL password authentication, for the agent's connection to a target:
 * md5 and SCRAM-SHA-256 (RFC 5802 / RFC 7677; channel binding `tls-server-end-point` when the
 * connection is TLS and the server offers SCRAM-SHA-256-PLUS). Pure functions over node:crypto.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual, type BinaryLike } from "node:crypto";
import { ProtocolError } from "./frontend.js";

/** `md5` + md5(md5(password + user) + salt), as PostgreSQL expects. */
export function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = createHash("md5")
    .update(password + user)
    .digest("hex");
  return (
    "md5" +
    createHash("md5")
      .update(Buffer.concat([Buffer.from(inner), salt]))
      .digest("hex")
  );
}

const hmac = (key: BinaryLike, data: string | Buffer) => createHmac("sha256", key).update(data).digest();
const sha256 = (data: Buffer) => createHash("sha256").update(data).digest();

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (a[i] as number) ^ (b[i] as number);
  return out;
}

/** SASLprep is not applied: passwords with non-ASCII characters should be normalized by the operator. */
export class ScramClient {
  private readonly nonce: string;
  private readonly gs2: string;
  private clientFirstBare = "";
  private serverSignature: Buffer | undefined;

  constructor(
    private readonly password: string,
    /** The server certificate's hash for `tls-server-end-point` channel binding, or undefined. */
    private readonly channelBinding?: Buffer,
    nonce?: string,
    /**
     * Without binding data: whether the connection could have bound (TLS). Then the client says so
     * (`y`), and a server that did offer SCRAM-SHA-256-PLUS refuses — a stripped offer is detected.
     */
    couldBind = false,
  ) {
    this.nonce = nonce ?? randomBytes(18).toString("base64");
    this.gs2 = channelBinding ? "p=tls-server-end-point,," : couldBind ? "y,," : "n,,";
  }

  get mechanism(): string {
    return this.channelBinding ? "SCRAM-SHA-256-PLUS" : "SCRAM-SHA-256";
  }

  /** client-first-message. The user name is sent empty: PostgreSQL uses the startup user. */
  first(): string {
    this.clientFirstBare = `n=,r=${this.nonce}`;
    return this.gs2 + this.clientFirstBare;
  }

  /** client-final-message for the server-first-message. */
  final(serverFirst: string): string {
    const attrs = parseAttributes(serverFirst);
    const nonce = attrs.get("r");
    const salt = attrs.get("s");
    const iterations = Number(attrs.get("i"));
    if (!nonce || !salt || !Number.isInteger(iterations) || iterations < 1)
      throw new ProtocolError("SCRAM: malformed server-first-message", "28000");
    if (!nonce.startsWith(this.nonce) || nonce.length === this.nonce.length)
      throw new ProtocolError("SCRAM: the server's nonce does not extend ours", "28000");
    if (iterations > 10_000_000) throw new ProtocolError("SCRAM: iteration count too high", "28000");
    const salted = pbkdf2Sync(this.password, Buffer.from(salt, "base64"), iterations, 32, "sha256");
    const clientKey = hmac(salted, "Client Key");
    const storedKey = sha256(clientKey);
    const serverKey = hmac(salted, "Server Key");
    const cbindInput = this.channelBinding
      ? Buffer.concat([Buffer.from(this.gs2), this.channelBinding])
      : Buffer.from(this.gs2);
    const withoutProof = `c=${cbindInput.toString("base64")},r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    this.serverSignature = hmac(serverKey, authMessage);
    return `${withoutProof},p=${xor(clientKey, clientSignature).toString("base64")}`;
  }

  /** Checks the server-final-message: the server proves it knows the password too. */
  verify(serverFinal: string): void {
    const attrs = parseAttributes(serverFinal);
    if (attrs.has("e")) throw new ProtocolError(`SCRAM: the server refused: ${attrs.get("e")}`, "28000");
    const v = attrs.get("v");
    if (!v || !this.serverSignature) throw new ProtocolError("SCRAM: malformed server-final-message", "28000");
    const got = Buffer.from(v, "base64");
    if (got.length !== this.serverSignature.length || !timingSafeEqual(got, this.serverSignature))
      throw new ProtocolError("SCRAM: the server's signature does not match", "28000");
  }
}

function parseAttributes(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of text.split(",")) {
    const eq = part.indexOf("=");
    if (eq === 1) out.set(part[0] as string, part.slice(2));
  }
  return out;
}

/**
 * `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's DER
 * certificate, with SHA-256 for MD5/SHA-1 signatures, otherwise the signature's hash.
 */
export function tlsServerEndPoint(certDer: Buffer, signatureHash: string | undefined): Buffer {
  const algo =
    !signatureHash || /^(md5|sha1|sha-1)$/i.test(signatureHash)
      ? "sha256"
      : signatureHash.toLowerCase().replace("-", "");
  return createHash(algo).update(certDer).digest();
}
