//! `vessel`, Vessel's command-line client.
//!
//! It speaks the Docker Engine API to a daemon (`vesseld`, or any
//! Docker-compatible daemon) over a unix socket or TCP with TLS, with
//! docker's verbs, flags, output formats, contexts and credential store, so
//! that `alias docker=vessel` keeps working. It links no engine code: the
//! API is its only interface to the daemon.
//!
//! Modules, from the wire up:
//! - [`endpoint`], [`config`]: where the daemon is; docker's `config.json`,
//!   contexts and credentials.
//! - [`api`]: HTTP/1.1 requests, version negotiation, streaming and
//!   hijacked connections.
//! - [`stream`], [`term`]: container stdio framing, attach pumping, raw
//!   terminals.
//! - [`opts`]: `run`/`create` flags to the create body.
//! - [`template`], [`format`], [`units`]: `--format`, tables, sizes and
//!   times.
//! - [`progress`]: pull/push/build message streams.
//! - [`ignore`], [`archive`]: `.dockerignore`, build contexts, `cp`.
//! - [`commands`], [`cli`]: the verbs and the command line.

// Output is built as text, where `push_str(&format!(..))` reads better than
// `write!` with an ignored result. Sizes and counts become f64 only to be
// printed in human units, where the lost precision cannot show. Small
// closures over JSON fields use one-letter names by design.
#![allow(
    clippy::format_push_string,
    clippy::cast_precision_loss,
    clippy::many_single_char_names,
    clippy::single_match_else
)]

pub mod api;
pub mod archive;
pub mod cli;
pub mod commands;
pub mod config;
pub mod endpoint;
pub mod format;
pub mod ignore;
pub mod opts;
pub mod progress;
pub mod stream;
pub mod template;
pub mod term;
pub mod units;
