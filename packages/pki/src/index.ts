/**
 * @moat/pki: the control plane's small certificate authority for the agent channel. Generates a CA,
 * issues server certificates for the gRPC listener, and computes the fingerprints agents pin.
 * Pure crypto, no file I/O: callers decide where PEMs live (and with what permissions).
 */
import "reflect-metadata";
import { createHash, webcrypto, X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const DAY_MS = 24 * 60 * 60 * 1000;

/** A certificate and its private key, both PEM. */
export interface CertificateAndKey {
  certPem: string;
  keyPem: string;
}

function serial(): string {
  // Positive 128-bit serial (leading byte < 0x80).
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return Buffer.from(bytes).toString("hex");
}

async function exportKeyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key));
  const body = der
    .toString("base64")
    .replace(/(.{64})/g, "$1\n")
    .trimEnd();
  return `-----BEGIN PRIVATE KEY-----\n${body}\n-----END PRIVATE KEY-----\n`;
}

async function importKeyPem(pem: string): Promise<webcrypto.CryptoKey> {
  const body = pem.replace(/-----(BEGIN|END) PRIVATE KEY-----/g, "").replace(/\s+/g, "");
  return await webcrypto.subtle.importKey("pkcs8", Buffer.from(body, "base64"), ALGORITHM, false, ["sign"]);
}

async function generateKeys(): Promise<webcrypto.CryptoKeyPair> {
  return await webcrypto.subtle.generateKey(ALGORITHM, true, ["sign", "verify"]);
}

/** Creates a self-signed CA (ECDSA P-256), valid for `days` (default 10 years). */
export async function createCertificateAuthority(
  commonName: string,
  days = 3650,
  now = new Date(),
): Promise<CertificateAndKey> {
  const keys = await generateKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${commonName}`,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + days * DAY_MS),
    signingAlgorithm: ALGORITHM,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString("pem") + "\n", keyPem: await exportKeyPem(keys.privateKey) };
}

/**
 * Issues a TLS server certificate signed by `ca` for the given DNS names and IP addresses
 * (default validity 1 year).
 */
export async function issueServerCertificate(
  ca: CertificateAndKey,
  subjectAltNames: string[],
  days = 365,
  now = new Date(),
): Promise<CertificateAndKey> {
  if (subjectAltNames.length === 0) throw new Error("a server certificate needs at least one name");
  const caCert = new x509.X509Certificate(ca.certPem);
  const caKey = await importKeyPem(ca.keyPem);
  const keys = await generateKeys();
  const names = subjectAltNames.map((name) =>
    isIP(name) ? { type: "ip" as const, value: name } : { type: "dns" as const, value: name },
  );
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${subjectAltNames[0]}`,
    issuer: caCert.subject,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + days * DAY_MS),
    signingAlgorithm: ALGORITHM,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
      new x509.SubjectAlternativeNameExtension(names, false),
      await x509.AuthorityKeyIdentifierExtension.create(caCert, false),
    ],
  });
  return { certPem: cert.toString("pem") + "\n", keyPem: await exportKeyPem(keys.privateKey) };
}

/** Lowercase hex SHA-256 of a certificate's DER encoding (what agents pin). */
export function certificateFingerprint(certPemOrDer: string | Buffer): string {
  const der = typeof certPemOrDer === "string" ? new X509Certificate(certPemOrDer).raw : certPemOrDer;
  return createHash("sha256").update(der).digest("hex");
}

/** Names (DNS and IP) a PEM certificate is valid for, and its expiry. */
export function describeCertificate(certPem: string): { subjectAltNames: string[]; notAfter: Date } {
  const cert = new X509Certificate(certPem);
  const names = (cert.subjectAltName ?? "")
    .split(",")
    .map((s) => s.trim().replace(/^(DNS|IP Address):/, ""))
    .filter(Boolean);
  return { subjectAltNames: names, notAfter: new Date(cert.validTo) };
}

/**
 * The hash algorithm of a certificate's signature (`SHA-256`, `SHA-384`, `SHA-1`...), for TLS channel
 * binding (`tls-server-end-point`); undefined when it cannot be told (e.g. Ed25519).
 */
export function certificateSignatureHash(der: Buffer): string | undefined {
  try {
    const algorithm = new x509.X509Certificate(der).signatureAlgorithm as { hash?: { name?: string } };
    return algorithm.hash?.name;
  } catch {
    return undefined;
  }
}
