import { describe, expect, it } from "vitest";
import {
  DETECTOR_NAMES,
  detectorMask,
  findMatches,
  ibanChecksumValid,
  inseeKeyValid,
  luhn,
  mayContain,
  plausibleCard,
  type Detector,
} from "./detectors.js";

/** The matched substrings of one detector in `text`. */
function found(detector: Detector, text: string): string[] {
  return findMatches(text, [detector]).map((m) => text.slice(m.start, m.end));
}

/** Positives: the value is found exactly (also inside a sentence). Negatives: nothing is found. */
function table(detector: Detector, positives: string[], negatives: string[]): void {
  describe(detector, () => {
    it.each(positives)("finds %j", (value) => {
      expect(found(detector, value)).toEqual([value]);
      expect(found(detector, `see: ${value} (done)`)).toEqual([value]);
    });
    it.each(negatives)("ignores %j", (value) => {
      expect(found(detector, value)).toEqual([]);
    });
  });
}

const JWT =
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
const PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1c7+9z\nq2Ab==\n-----END RSA PRIVATE KEY-----";

const ORDINARY = [
  "the quick brown fox jumps over the lazy dog",
  "550e8400-e29b-41d4-a716-446655440000",
  "2024-01-15",
  "2024-01-15 10:30:00.123456+02",
  "15/01/2024 12:30",
  "3.14159265358979",
  "v1.2.3-rc.4",
  "192.168.100.200",
  "ORD-2024-000123",
  "12345",
  "",
];

table(
  "email",
  [
    "alice@example.com",
    "alice.b+tag@mail.example.co.uk",
    "neil@example.org",
    "J_Doe-99%x@sub-domain.example.io",
    "josé@exemple.fr",
  ],
  [...ORDINARY, "a@b", "x@1.2.3.4", "@example.com", "alice@", "alice@.com", "alice@-x.com", "user@localhost", "a@b.c"],
);

describe("email edges", () => {
  it("stops at delimiters and trims a sentence's full stop", () => {
    expect(found("email", "<alice@example.com>; mailto:bob@x.io.")).toEqual(["alice@example.com", "bob@x.io"]);
    expect(found("email", "name='carol@example.com'")).toEqual(["carol@example.com"]);
    expect(found("email", "..dave@example.com")).toEqual(["dave@example.com"]);
  });
  it("reads characters above U+00FF as non-ASCII letters, not as their low byte", () => {
    // findMatches is given latin1 views; plain JavaScript text must not be misread either.
    expect(found("email", "名@名.com")).toEqual(["名@名.com"]);
    expect(found("email", "a@exĀmple.com")).toEqual(["a@exĀmple.com"]);
    expect(found("email", "bobŀx.io")).toEqual([]); // U+0140's low byte is "@"
  });

  it("finds every address of a list", () => {
    expect(found("email", "a@x.io,b@y.io;c@z.io d@w.io")).toEqual(["a@x.io", "b@y.io", "c@z.io", "d@w.io"]);
  });
});

table(
  "credit-card",
  [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "5500 0000 0000 0004",
    "5555555555554444",
    "2221000000000009",
    "378282246310005",
    "3782 822463 10005",
    "30569309025904",
    "6011111111111117",
    "6011 0009 9013 9424",
    "4222222222222",
    "3530111333300000",
  ],
  [
    ...ORDINARY,
    "4111111111111112", // Luhn fails
    "4111 1111 1111 1112",
    "5500 0000 0000 0005",
    "1700000000000", // epoch milliseconds (prefix 1)
    "1234567812345670", // Luhn passes, prefix 1
    "7000000000000008", // prefix 7
    "41111111111111111111", // 20 digits: part of a longer number
    "411111111111111", // Visa with 15 digits
    "4111 1111 1111 1111".replace(/ /g, "_"),
    "id4111111111111111",
    "0.4111111111111111",
    "41111 11111 11111 1", // not a card grouping
    "4111-1111 1111-1111", // mixed separators
    "+4915112345678", // a phone
    "100 200 300 400 500",
    "3298534883328000", // Luhn passes, prefix 32 (no issuer): pg_size_bytes('3000 TB')
    "31000000000000005",
    "3300000000000001",
  ],
);

describe("credit-card edges", () => {
  it("finds the card before a CVV and two cards in one value", () => {
    expect(found("credit-card", "4111 1111 1111 1111 123")).toEqual(["4111 1111 1111 1111"]);
    expect(found("credit-card", "4111111111111111 5500000000000004")).toEqual(["4111111111111111", "5500000000000004"]);
  });
  it("checks Luhn and issuer prefixes", () => {
    expect(luhn("79927398713")).toBe(true);
    expect(luhn("79927398710")).toBe(false);
    expect(plausibleCard("2720999999999996")).toBe(luhn("2720999999999996"));
    expect(plausibleCard("2721000000000007")).toBe(false);
  });
});

table(
  "phone",
  [
    "+1 (555) 123-4567",
    "+1 555 123 4567",
    "+44 20 7946 0958",
    "+33 1 23 45 67 89",
    "+33 (0)1 23 45 67 89",
    "+4915112345678",
    "+49-30-1234567",
    "+1.555.123.4567",
    "(212) 555-1234",
    "212-555-1234",
    "212.555.1234",
    "1-800-555-1234",
    "01 23 45 67 89",
    "06.12.34.56.78",
    "020 7946 0958",
    "07700 900123",
    "0151-12345678",
  ],
  [
    ...ORDINARY,
    "1234567890", // bare digits: an ID or an amount as likely as a phone
    "0612345678",
    "555-1234", // too short
    "+123456", // too few digits
    "+1234567890123456", // more than E.164's 15
    "01.02.2024", // a date
    "2024-01-15-12", // date-like
    "123-45-6789", // an SSN
    "112-555-1234", // area code starting 1
    "ORD-212-555-1234",
    "1+4915112345678",
    "4111 1111 1111 1111",
    "01 23 45 67 89 12 34", // longer than 12 digits
    "12:30:45",
    "+7799461.4119", // signed decimals (to_char's S format, an amount)
    "+16397.038491",
    "+93901.57763026",
  ],
);

table(
  "iban",
  [
    "DE89370400440532013000",
    "DE89 3704 0044 0532 0130 00",
    "GB82 WEST 1234 5698 7654 32",
    "GB82WEST12345698765432",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91ABNA0417164300",
    "NO9386011117947",
    "de89 3704 0044 0532 0130 00",
  ],
  [
    ...ORDINARY,
    "DE89 3704 0044 0532 0130 01", // checksum
    "GB82WEST12345698765433",
    "DE89370400440532013000123", // longer than Germany's 22
    "DE8937040044053201300", // shorter
    "XX89370400440532013000", // unknown country
    "DE89370400440532013000X",
    "AB12 meeting at 10",
  ],
);

describe("iban edges", () => {
  it("ends at the country's length when text follows", () => {
    expect(found("iban", "iban DE89 3704 0044 0532 0130 00 1 transfer")).toEqual(["DE89 3704 0044 0532 0130 00"]);
    expect(ibanChecksumValid("GB82WEST12345698765432")).toBe(true);
    expect(ibanChecksumValid("GB82WEST1234569876543!")).toBe(false);
  });
});

table(
  "national-id",
  [
    "123-45-6789",
    "123 45 6789",
    "078-05-1120",
    "AB123456C",
    "AB 12 34 56 C",
    "CE 123456 D",
    "1 85 05 78 006 084 91",
    "185057800608491",
    "2 69 02 99 341 732 85",
    "1 85 05 2A 006 084 35",
  ],
  [
    ...ORDINARY,
    "000-12-3456",
    "666-12-3456",
    "900-12-3456",
    "999-99-9999",
    "123-00-4567",
    "123-45-0000",
    "123-45 6789", // mixed separators
    "123456789", // bare digits
    "123-45-67890",
    "BG123456A", // prefix never issued
    "GB123456A",
    "DA123456A", // D is not a first letter
    "AO123456A", // O is not a second letter
    "AB123456E", // suffix
    "ab123456c", // lower case
    "1 85 05 78 006 084 92", // INSEE key
    "3 85 05 78 006 084 91", // sex digit
  ],
);

describe("national-id edges", () => {
  it("checks the INSEE key", () => {
    expect(inseeKeyValid("185057800608491")).toBe(true);
    expect(inseeKeyValid("185057800608490")).toBe(false);
  });
});

table(
  "api-key",
  [
    "AKIAIOSFODNN7EXAMPLE",
    "ASIAIOSFODNN7EXAMPLE",
    "ghp_" + "aB3".repeat(12),
    "gho_" + "x".repeat(36),
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "xoxp-1234-5678-abcdEFGH",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    "sk-proj-" + "Ab1".repeat(16),
    "sk-" + "T3BlbkFJ".repeat(6),
    "moat_ak_k3x9_Zq8vR2mN5pL7wT4y",
    "moat_ac_abcd1234",
    "moat_et1_eyJhbGci0123",
    PEM,
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----",
  ],
  [
    ...ORDINARY,
    "AKIAIOSFODNN7EXAMPL", // 15 after the prefix
    "AKIAIOSFODNN7EXAMPLE1", // 17
    "XAKIAIOSFODNN7EXAMPLE",
    "ghp_short",
    "ghx_" + "a".repeat(36),
    "sk_live_short",
    "pk_live_4eC39HqLyjWDarjtT1zdp7dc", // publishable: public by design
    "sk-learn-is-a-library-for-machine-learning", // no digit
    "task-" + "a1".repeat(20),
    "moat_xx_abcdef",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
  ],
);

describe("api-key edges", () => {
  it("masks a truncated PEM block to the end of the value", () => {
    const text = "key: -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI";
    expect(found("api-key", text)).toEqual(["-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI"]);
  });
  it("finds two PEM blocks separately", () => {
    expect(found("api-key", `${PEM}\ntext between\n${PEM}`)).toEqual([PEM, PEM]);
  });
});

table(
  "jwt",
  [JWT, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "eyJhbGciOiJFUzI1NiJ9.eyJhIjoxfQ.abc-_123"],
  [
    ...ORDINARY,
    "eyJhbGciOiJIUzI1NiJ9.notjson.sig", // payload not JSON
    "abc.def.ghi",
    "eyJhbGciOiJIUzI1NiJ9", // one segment
    "xeyJhbGciOiJIUzI1NiJ9.eyJhIjoxfQ.sig",
  ],
);

describe("several detectors", () => {
  it("finds matches of every detector, sorted by position", () => {
    const text = `alice@example.com paid with 4111 1111 1111 1111 from DE89370400440532013000, token ${JWT}`;
    const matches = findMatches(text, DETECTOR_NAMES);
    expect(matches.map((m) => [m.detector, text.slice(m.start, m.end)])).toEqual([
      ["email", "alice@example.com"],
      ["credit-card", "4111 1111 1111 1111"],
      ["iban", "DE89370400440532013000"],
      ["jwt", JWT],
    ]);
  });

  it("offsets are bytes when the text is a latin1 view of UTF-8", () => {
    const bytes = Buffer.from("名前: 山田 — 4111111111111111 ✓");
    const text = bytes.toString("latin1");
    const [m] = findMatches(text, ["credit-card"]);
    expect(bytes.subarray(m!.start, m!.end).toString()).toBe("4111111111111111");
  });

  it("takes a mask or a list", () => {
    expect(findMatches("AKIAIOSFODNN7EXAMPLE", detectorMask(["api-key"]))).toHaveLength(1);
    expect(findMatches("AKIAIOSFODNN7EXAMPLE", detectorMask(["email"]))).toHaveLength(0);
  });
});

describe("mayContain", () => {
  const all = detectorMask(DETECTOR_NAMES);
  const bytes = (s: string) => Buffer.from(s);

  it("rejects values that cannot hold a match", () => {
    expect(mayContain(bytes("hello"), 0, all)).toBe(0);
    expect(mayContain(bytes("12345"), 0, all)).toBe(0);
    expect(mayContain(bytes("no at sign here, just words"), 0, detectorMask(["email", "credit-card"]))).toBe(0);
  });

  it("never rejects a value holding a match", () => {
    const samples = [
      "a@b.co",
      "4222222222222",
      "+4915112345678",
      "NO9386011117947",
      "AB123456C",
      "AKIAIOSFODNN7EXAMPLE",
      "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
      "1 85 05 78 006 084 91",
    ];
    for (const s of samples) {
      const matches = findMatches(s, DETECTOR_NAMES);
      expect(matches.length).toBeGreaterThan(0);
      const possible = mayContain(bytes(s), 0, all);
      for (const m of matches) expect(possible & detectorMask([m.detector])).not.toBe(0);
    }
  });

  it("starts at the given offset", () => {
    const value = Buffer.concat([Buffer.from([1]), bytes("a@b.co")]);
    expect(mayContain(value, 1, detectorMask(["email"]))).not.toBe(0);
    expect(mayContain(value, 2, detectorMask(["email"]))).toBe(0);
  });
});

describe("random digit strings", () => {
  function rng(seed: number) {
    let x = seed >>> 0;
    return () => {
      x = (x * 1664525 + 1013904223) >>> 0;
      return x / 2 ** 32;
    };
  }
  const r = rng(42);
  const digits = (n: number, first = "0123456789") =>
    first[Math.floor(r() * first.length)]! + Array.from({ length: n - 1 }, () => Math.floor(r() * 10)).join("");

  it("bare digits are never phones or national IDs, whatever the length", () => {
    for (let i = 0; i < 3000; i++) {
      const text = digits(1 + (i % 24));
      expect(findMatches(text, ["phone", "iban", "api-key", "jwt", "email"])).toEqual([]);
      // INSEE numbers are bare 15-digit strings with a key: 1 in 97 random ones pass, by design.
      if (text.length !== 15) expect(findMatches(text, ["national-id"])).toEqual([]);
    }
  });

  it("digit strings without a card issuer prefix are never cards", () => {
    for (let i = 0; i < 3000; i++) {
      const text = digits(13 + (i % 7), "01789");
      expect(findMatches(text, ["credit-card"])).toEqual([]);
    }
  });

  it("about one in ten strings with an issuer prefix and a valid length passes Luhn, no more", () => {
    let hits = 0;
    for (let i = 0; i < 3000; i++) if (findMatches(digits(16, "456"), ["credit-card"]).length > 0) hits++;
    expect(hits).toBeGreaterThan(200);
    expect(hits).toBeLessThan(400);
  });
});
