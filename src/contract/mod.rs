//! DataContract logic that needs no Kubernetes API: schema validation beyond the CRD's CEL rules,
//! the canonical form and hash of a schema, and compatibility checks between versions. The
//! DataContract controller and the `flowplane contract` command both call it.

pub mod canonical;
pub mod cli;
pub mod compatibility;
pub mod history;
pub mod validate;
pub mod value;

pub use canonical::{canonical_json, schema_hash};
pub use compatibility::{
    Break, Candidate, ChangeKind, CheckError, Direction, Outcome, PublishedSchema, Verdict, check,
};
pub use validate::{Problem, validate_contract, validate_schema};
