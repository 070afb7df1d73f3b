//! Vessel's image builder. The Dockerfile frontend (parsing, variable
//! expansion, stage graph, `.dockerignore`) lives in [`dockerfile`]; it is a
//! pure library that performs no I/O except reading a build context to apply
//! `.dockerignore`. Executing steps, the build cache and the `POST /build`
//! API are built on top of it and live elsewhere.

pub mod dockerfile;
