export * from "./frontend.js";
export * from "./backend.js";
export * from "./auth.js";
export { serialize } from "pg-protocol";
