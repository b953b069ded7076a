/**
 * TLS material for the agent channel. Operator-provided PEM files win; otherwise a CA is created on
 * first start in <dataDir>/pki (private keys mode 0600, directory 0700) and a server certificate is
 * issued for the configured names, re-issued when the names change or expiry is near.
 * Agents pin the CA by its SHA-256 fingerprint (carried in enrolment tokens).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hostname } from "node:os";
import {
  certificateFingerprint,
  createCertificateAuthority,
  describeCertificate,
  issueServerCertificate,
} from "@moat/pki";

export interface TlsMaterial {
  caPem: string;
  certPem: string;
  keyPem: string;
  caFingerprint: string;
}

const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;

function writeSecretFile(path: string, content: string): void {
  writeFileSync(path, content, { mode: 0o600 });
  chmodSync(path, 0o600);
}

/** Names the generated server certificate covers. */
export function serverNames(grpcHost: string, advertiseAddress: string | undefined, extra: string[]): string[] {
  const names = new Set<string>(["localhost", "127.0.0.1", "::1", hostname()]);
  if (grpcHost !== "0.0.0.0" && grpcHost !== "::") names.add(grpcHost);
  if (advertiseAddress) names.add(advertiseAddress.replace(/^\[?(.*?)\]?:\d+$/, "$1"));
  for (const name of extra) names.add(name);
  return [...names];
}

export async function loadOrCreateTlsMaterial(options: {
  dataDir: string;
  names: string[];
  files?: { certFile: string; keyFile: string; caFile: string };
  now?: Date;
}): Promise<TlsMaterial & { created: string[] }> {
  if (options.files) {
    const caPem = readFileSync(options.files.caFile, "utf8");
    return {
      caPem,
      certPem: readFileSync(options.files.certFile, "utf8"),
      keyPem: readFileSync(options.files.keyFile, "utf8"),
      caFingerprint: certificateFingerprint(caPem),
      created: [],
    };
  }
  const now = options.now ?? new Date();
  const dir = join(options.dataDir, "pki");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const paths = {
    caCert: join(dir, "ca.crt"),
    caKey: join(dir, "ca.key"),
    cert: join(dir, "server.crt"),
    key: join(dir, "server.key"),
  };
  const created: string[] = [];
  let ca: { certPem: string; keyPem: string };
  if (existsSync(paths.caCert) && existsSync(paths.caKey)) {
    ca = { certPem: readFileSync(paths.caCert, "utf8"), keyPem: readFileSync(paths.caKey, "utf8") };
  } else {
    ca = await createCertificateAuthority(`Moat agent channel CA (${hostname()})`, 3650, now);
    writeSecretFile(paths.caKey, ca.keyPem);
    writeFileSync(paths.caCert, ca.certPem);
    created.push("ca");
  }
  let server: { certPem: string; keyPem: string } | undefined;
  if (existsSync(paths.cert) && existsSync(paths.key) && created.length === 0) {
    const certPem = readFileSync(paths.cert, "utf8");
    const info = describeCertificate(certPem);
    const coversAll = options.names.every((n) => info.subjectAltNames.includes(n));
    if (coversAll && info.notAfter.getTime() - now.getTime() > RENEW_BEFORE_MS) {
      server = { certPem, keyPem: readFileSync(paths.key, "utf8") };
    }
  }
  if (!server) {
    server = await issueServerCertificate(ca, options.names, 365, now);
    writeSecretFile(paths.key, server.keyPem);
    writeFileSync(paths.cert, server.certPem);
    created.push("server");
  }
  return {
    caPem: ca.certPem,
    certPem: server.certPem,
    keyPem: server.keyPem,
    caFingerprint: certificateFingerprint(ca.certPem),
    created,
  };
}
