//! The crate's layering holds: every `crate::<module>` (and `super::` reaching the crate root)
//! in `src/` names a module that the table in docs/architecture.md allows its module to import,
//! and every module of the crate is in that table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Module -> the modules it may import, from the table between the layer markers.
fn allowed_imports(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let start = doc
        .find("<!-- layers:begin -->")
        .expect("layers:begin marker");
    let end = doc.find("<!-- layers:end -->").expect("layers:end marker");
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let module = cells[1].to_string();
            let imports = cells[3]
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            (module, imports)
        })
        .collect()
}

/// The top-level modules a file's code refers to: `crate::m`, and `super::` chains that climb
/// to the crate root. `path` is the file's module path, e.g. ["render", "alerts"].
fn referenced_modules(path: &[String], source: &str) -> BTreeSet<String> {
    let crate_ref = Regex::new(r"\bcrate::([a-z_][a-z0-9_]*)").unwrap();
    let super_ref = Regex::new(r"\b((?:super::)+)([a-z_][a-z0-9_]*)").unwrap();
    let mut found = BTreeSet::new();
    for line in source.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        found.extend(crate_ref.captures_iter(line).map(|c| c[1].to_string()));
        for c in super_ref.captures_iter(line) {
            let climbs = c[1].len() / "super::".len();
            if climbs >= path.len() {
                found.insert(c[2].to_string());
            }
        }
    }
    found
}

/// The module path of a file below `src/`, e.g. `render/alerts.rs` -> ["render", "alerts"].
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every import that breaks the table, as "file: module -> imported".
fn violations(
    rules: &BTreeMap<String, BTreeSet<String>>,
    files: &[(PathBuf, String)],
) -> Vec<String> {
    let mut broken = Vec::new();
    for (relative, source) in files {
        let path = module_path(relative);
        let Some(module) = path.first() else { continue };
        if module == "main" || module == "lib" {
            continue; // the binary and the crate root may use every module
        }
        let Some(allowed) = rules.get(module) else {
            broken.push(format!(
                "{}: module {module} is not in docs/architecture.md's layer table",
                relative.display()
            ));
            continue;
        };
        for imported in referenced_modules(&path, source) {
            if imported != *module && !allowed.contains(&imported) {
                broken.push(format!("{}: {module} -> {imported}", relative.display()));
            }
        }
    }
    broken
}

#[test]
fn no_module_imports_one_its_layer_may_not() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules =
        allowed_imports(&std::fs::read_to_string(root.join("docs/architecture.md")).unwrap());
    assert!(rules.len() >= 9, "layer table not found: {rules:?}");
    let mut paths = Vec::new();
    rust_files(&root.join("src"), &mut paths);
    let files: Vec<(PathBuf, String)> = paths
        .iter()
        .map(|p| {
            (
                p.strip_prefix(root.join("src")).unwrap().to_path_buf(),
                std::fs::read_to_string(p).unwrap(),
            )
        })
        .collect();
    assert!(files.len() > 50, "read only {} files", files.len());
    let broken = violations(&rules, &files);
    assert!(
        broken.is_empty(),
        "imports against the layers of docs/architecture.md:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_check_catches_upward_simulator_and_unlisted_imports() {
    let rules = allowed_imports(
        "<!-- layers:begin -->\n| module | what | may import |\n|---|---|---|\n\
         | api | types | |\n| render | builders | api |\n| worker | data | api |\n\
         | sim | sims | api |\n<!-- layers:end -->",
    );
    let file = |path: &str, source: &str| (PathBuf::from(path), source.to_string());
    let broken = violations(
        &rules,
        &[
            file(
                "render/alerts.rs",
                "use crate::controller::x;\nuse crate::api::Y;",
            ),
            file("render/mod.rs", "use crate::worker::config::WorkerConfig;"),
            file("worker/sample.rs", "let e = crate::sim::erp::SALES;"),
            file("sim/erp.rs", "use super::super::worker::clock;"),
            file("sim/erp.rs", "// crate::worker in prose is not an import"),
            file("render/scaling.rs", "use super::labels;"),
            file("newthing.rs", "use crate::api;"),
        ],
    );
    assert_eq!(
        broken,
        vec![
            "render/alerts.rs: render -> controller",
            "render/mod.rs: render -> worker",
            "worker/sample.rs: worker -> sim",
            "sim/erp.rs: sim -> worker",
            "newthing.rs: module newthing is not in docs/architecture.md's layer table",
        ]
    );
}
