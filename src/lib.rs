//! flowplane: a Kubernetes operator that makes every ERP <-> demand-forecasting data flow a
//! declarative, observable, governed object. The same crate is the sync worker.

pub mod api;
pub mod contract;
pub mod controller;
pub mod crdgen;
pub mod fuzz;
pub mod queue;
pub mod render;
pub mod sim;
pub mod worker;
pub mod worker_config;

/// jemalloc for every binary of the crate (the operator, the worker, and the tests and
/// benchmarks that run them in process): with glibc's allocator the worker spent 7% more CPU per
/// record, with musl's (the image's libc until it moved to glibc) two thirds more
/// (BENCHMARKS.md, "The image's allocator"). jemalloc over mimalloc, whose v3 made the worker
/// slower here. Not under cargo-fuzz, whose sanitizers must see every allocation.
#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
