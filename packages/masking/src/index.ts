/**
 * @moat/masking: result masking for the agent's Postgres proxy. Pure (no I/O): mask rules in, a
 * planner out; per RowDescription a plan naming the columns that need work; per value the masked
 * bytes. Semantics: docs/policy.md, `spec.masking[]`.
 */
export { compileMasks, MIN_HASH_KEY_BYTES } from "./planner.js";
export type { ColumnPlan, CompileMasksOptions, MaskPlanner, ResultPlan } from "./planner.js";
export type { ColumnInfo, ValueKind } from "./columns.js";
export { DETECTOR_NAMES, findMatches } from "./detectors.js";
export type { Detector, DetectorMatch } from "./detectors.js";
export { STYLE_STRENGTH } from "./styles.js";
export type { MaskStyle } from "./styles.js";
