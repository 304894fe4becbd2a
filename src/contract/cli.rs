//! `flowplane contract check`: the compatibility check of a DataContract change, offline, for CI
//! on a pull request. Exit status 0 when compatible, 1 when not, 2 when the input is unusable.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Deserialize;

use super::canonical::schema_hash;
use super::compatibility::{Candidate, Outcome, PublishedSchema, check};
use super::validate::validate_contract;
use crate::api::DataContract;
use crate::api::common::{GROUP, VERSION};
use crate::api::data_contract::Compatibility;

const COMPATIBLE: i32 = 0;
const BREAKING: i32 = 1;
const UNUSABLE: i32 = 2;

/// Arguments of `flowplane contract`.
#[derive(Args, Debug)]
pub struct ContractArgs {
    #[command(subcommand)]
    command: ContractCommand,
}

#[derive(Subcommand, Debug)]
enum ContractCommand {
    /// Check a new DataContract version against its published versions.
    ///
    /// Exit status: 0 compatible, 1 breaking (or not publishable as this version), 2 unusable
    /// input.
    Check {
        /// DataContract manifests: the published versions oldest first, then the candidate last.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Compatibility mode (None, Backward, BackwardTransitive, Forward, ForwardTransitive,
        /// Full, FullTransitive); defaults to the candidate's spec.compatibility.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Compatibility>,
    },
}

pub(crate) const MODES: [Compatibility; 7] = [
    Compatibility::None,
    Compatibility::Backward,
    Compatibility::BackwardTransitive,
    Compatibility::Forward,
    Compatibility::ForwardTransitive,
    Compatibility::Full,
    Compatibility::FullTransitive,
];

fn parse_mode(text: &str) -> Result<Compatibility, String> {
    MODES
        .into_iter()
        .find(|mode| format!("{mode:?}").eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            let names: Vec<String> = MODES.iter().map(|m| format!("{m:?}")).collect();
            format!("unknown mode {text:?}; one of {}", names.join(", "))
        })
}

/// Runs `flowplane contract ...` and returns the process exit status.
pub fn run(args: ContractArgs) -> i32 {
    let status = match args.command {
        ContractCommand::Check { files, mode } => check_files(&files, mode),
    };
    // The caller exits the process right away, which does not flush stdout.
    let _ = std::io::stdout().flush();
    status
}

fn check_files(files: &[PathBuf], mode: Option<Compatibility>) -> i32 {
    let mut contracts = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        match load(path) {
            Ok(contract) => contracts.push((path, contract)),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        errors = consistency_errors(&contracts);
    }
    if !errors.is_empty() {
        for error in errors {
            eprintln!("error: {error}");
        }
        return UNUSABLE;
    }
    let Some(((_, candidate), published)) = contracts.split_last() else {
        eprintln!("error: no DataContract file given");
        return UNUSABLE;
    };

    let hashes: Vec<String> = published
        .iter()
        .map(|(_, c)| schema_hash(&c.spec.schema))
        .collect();
    let history: Vec<PublishedSchema> = published
        .iter()
        .zip(&hashes)
        .map(|((_, c), hash)| PublishedSchema {
            version: &c.spec.version,
            schema_hash: hash,
            schema: &c.spec.schema,
        })
        .collect();
    let mode = mode.unwrap_or(candidate.spec.compatibility);
    let verdict = match check(&history, &Candidate::from(&candidate.spec), mode) {
        Ok(verdict) => verdict,
        Err(error) => {
            eprintln!("error: {error}");
            return UNUSABLE;
        }
    };

    let domain = &candidate.spec.domain;
    let published_versions: Vec<&str> = published
        .iter()
        .map(|(_, c)| c.spec.version.as_str())
        .collect();
    println!(
        "{domain} {} (mode {mode:?}; published: {})",
        candidate.spec.version,
        if published_versions.is_empty() {
            "none".to_owned()
        } else {
            published_versions.join(", ")
        }
    );
    for broken in verdict.breaks() {
        println!("✗ {broken}");
    }
    if let Outcome::Compatible { checked_against } = &verdict.outcome
        && checked_against.is_empty()
        && mode != Compatibility::None
        && !published.is_empty()
    {
        println!(
            "  (a new major version starts a new compatibility line: earlier majors are not checked)"
        );
    }
    let mark = if verdict.is_compatible() {
        "✓"
    } else {
        "✗"
    };
    println!("{mark} {domain} {verdict}");
    if verdict.is_compatible() {
        COMPATIBLE
    } else {
        BREAKING
    }
}

/// The part of a manifest that says what it is, read before the rest for a clear error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeHeader {
    api_version: Option<String>,
    kind: Option<String>,
}

fn load(path: &Path) -> Result<DataContract, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    parse(&text).map_err(|e| format!("{shown}: {e}"))
}

/// A DataContract manifest's text, parsed and validated (the fuzz target `contract` feeds it
/// arbitrary text).
pub(crate) fn parse(text: &str) -> Result<DataContract, String> {
    let header: TypeHeader =
        serde_yaml::from_str(text).map_err(|e| format!("not a YAML manifest: {e}"))?;
    let expected_api = format!("{GROUP}/{VERSION}");
    if header.kind.as_deref() != Some("DataContract")
        || header.api_version.as_deref() != Some(expected_api.as_str())
    {
        return Err(format!(
            "not a DataContract (apiVersion {}, kind {}; expected {expected_api}, DataContract)",
            header.api_version.as_deref().unwrap_or("missing"),
            header.kind.as_deref().unwrap_or("missing"),
        ));
    }
    let contract: DataContract =
        serde_yaml::from_str(text).map_err(|e| format!("invalid DataContract: {e}"))?;
    let problems = validate_contract(&contract.spec);
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(|p| format!("  - spec.{p}")).collect();
        return Err(format!(
            "invalid DataContract {} {}:\n{}",
            contract.spec.domain,
            contract.spec.version,
            lines.join("\n")
        ));
    }
    Ok(contract)
}

/// The files must describe one domain, and the history must not hold one version twice with
/// different schemas.
fn consistency_errors(contracts: &[(&PathBuf, DataContract)]) -> Vec<String> {
    let mut errors = Vec::new();
    let Some((candidate_path, candidate)) = contracts.last() else {
        return errors;
    };
    for (path, contract) in contracts {
        if contract.spec.domain != candidate.spec.domain {
            errors.push(format!(
                "{}: domain {} differs from the candidate's ({}: {})",
                path.display(),
                contract.spec.domain,
                candidate_path.display(),
                candidate.spec.domain
            ));
        }
    }
    let history = &contracts[..contracts.len() - 1];
    for (index, (path, contract)) in history.iter().enumerate() {
        let earlier = history[..index].iter().find(|(_, other)| {
            other.spec.version == contract.spec.version
                && schema_hash(&other.spec.schema) != schema_hash(&contract.spec.schema)
        });
        if let Some((other_path, _)) = earlier {
            errors.push(format!(
                "{}: version {} is also published by {} with another schema",
                path.display(),
                contract.spec.version,
                other_path.display()
            ));
        }
    }
    errors
}
