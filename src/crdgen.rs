//! `flowplane crdgen`: writes the CRDs generated from the Rust types into `crds/`.

use std::path::{Path, PathBuf};

use crate::api;

/// File name of a CRD in `crds/`, e.g. `integrationflows.flowplane.io.yaml`.
fn file_name(name: &str) -> String {
    format!("{name}.yaml")
}

/// The YAML of every CRD keyed by its file name.
pub fn render() -> anyhow::Result<Vec<(String, String)>> {
    api::crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((file_name(&name), serde_yaml::to_string(&crd)?))
        })
        .collect()
}

/// Writes every CRD into `dir`, returning the paths written.
pub fn write(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    render()?
        .into_iter()
        .map(|(file, yaml)| {
            let path = dir.join(file);
            std::fs::write(&path, yaml)?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// crds/ is what users apply; it must be exactly what the Rust types generate.
    #[test]
    fn crds_folder_matches_the_rust_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let rendered = render().unwrap();
        assert_eq!(rendered.len(), 3);
        for (file, yaml) in rendered {
            let on_disk = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                on_disk == yaml,
                "crds/{file} is out of date with src/api: run `cargo run -- crdgen` and commit the result"
            );
        }
    }
}
