//! End-to-end tests for Vessel live in `tests/tests/`. They drive the real
//! binaries (`vessel-runtime`, `vesseld`, `vessel`, `vessel-registry`) as a user
//! or a CI system would; this library is intentionally empty.
