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
