//! `flowplane contract check` as CI runs it on a pull request: the built binary on the example
//! manifests in tests/contracts, asserting the exit status and the lines a reviewer reads.

use std::path::PathBuf;
use std::process::Command;

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Runs `flowplane contract check` with `args`; names ending in .yaml are taken from tests/contracts.
fn check(args: &[&str]) -> Run {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/contracts");
    let args: Vec<String> = args
        .iter()
        .map(|arg| {
            if arg.ends_with(".yaml") {
                dir.join(arg).display().to_string()
            } else {
                (*arg).to_owned()
            }
        })
        .collect();
    let output = Command::new(env!("CARGO_BIN_EXE_flowplane"))
        .args(["contract", "check"])
        .args(&args)
        .output()
        .expect("run flowplane");
    Run {
        status: output.status.code().expect("exit status"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    fn assert_status(&self, expected: i32) -> &Self {
        assert_eq!(
            self.status, expected,
            "exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn assert_line(&self, start: &str) -> &Self {
        assert!(
            self.stdout.lines().any(|line| line.starts_with(start)),
            "no stdout line starts with {start:?}:\n{}",
            self.stdout
        );
        self
    }

    fn assert_stderr(&self, fragment: &str) -> &Self {
        assert!(
            self.stderr.contains(fragment),
            "stderr lacks {fragment:?}:\n{}",
            self.stderr
        );
        self
    }
}

const V1_0: &str = "sales-order-lines-1.0.0.yaml";
const V1_1: &str = "sales-order-lines-1.1.0.yaml";
const V1_1_EDITED: &str = "sales-order-lines-1.1.0-edited.yaml";
const V1_2: &str = "sales-order-lines-1.2.0.yaml";
const V2_0: &str = "sales-order-lines-2.0.0.yaml";

#[test]
fn compatible_minor_version_passes() {
    check(&[V1_0, V1_1])
        .assert_status(0)
        .assert_line("sales-order-lines 1.1.0 (mode Backward; published: 1.0.0)")
        .assert_line("✓ sales-order-lines 1.1.0 is Backward compatible with 1.0.0");
}

#[test]
fn breaking_minor_version_lists_each_break() {
    let run = check(&[V1_0, V1_1, V1_2]);
    run.assert_status(1)
        .assert_line("✗ field orderedQuantity: TypeChanged (Decimal(15,3) -> String) breaks Backward against 1.1.0: ")
        .assert_line("✗ field itemCategory: EnumValueRemoved (ThirdParty) breaks Backward against 1.1.0: ")
        .assert_line("✗ field sku: MaxLengthTightened (40 -> 20) breaks Backward against 1.1.0: ")
        .assert_line("✗ sales-order-lines 1.2.0 is not Backward compatible with 1.1.0: 3 breaking changes");
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("✗ field"))
            .count(),
        3
    );
}

#[test]
fn transitive_mode_checks_every_version_of_the_line() {
    let run = check(&[V1_0, V1_1, V1_2, "--mode", "BackwardTransitive"]);
    run.assert_status(1)
        .assert_line("✗ field orderedQuantity: TypeChanged (Decimal(15,3) -> String) breaks Backward against 1.0.0: ")
        .assert_line("✗ field orderedQuantity: TypeChanged (Decimal(15,3) -> String) breaks Backward against 1.1.0: ")
        .assert_line("✗ sales-order-lines 1.2.0 is not BackwardTransitive compatible with 1.0.0, 1.1.0: 6 breaking changes");
}

#[test]
fn mode_flag_overrides_the_spec() {
    // Adding an enum value is fine for new readers, not for old ones.
    check(&[V1_0, V1_1, "--mode", "Forward"])
        .assert_status(1)
        .assert_line("✗ field itemCategory: EnumValueAdded (Return) breaks Forward against 1.0.0: ")
        .assert_line(
            "✗ sales-order-lines 1.1.0 is not Forward compatible with 1.0.0: 1 breaking change",
        );
    check(&[V1_0, V1_1, "--mode", "full"])
        .assert_status(1)
        .assert_line(
            "✗ field itemCategory: EnumValueAdded (Return) breaks Forward against 1.0.0: ",
        );
    check(&[V1_1, V1_2, "--mode", "None"])
        .assert_status(0)
        .assert_line(
            "✓ sales-order-lines 1.2.0 can be published: mode None checks no compatibility",
        );
}

#[test]
fn new_major_version_starts_a_new_line() {
    check(&[V1_0, V1_1, V2_0]).assert_status(0).assert_line(
        "✓ sales-order-lines 2.0.0 can be published: it is the first version of major line 2",
    );
}

#[test]
fn first_version_has_nothing_to_break() {
    check(&[V1_0])
        .assert_status(0)
        .assert_line("sales-order-lines 1.0.0 (mode Backward; published: none)")
        .assert_line(
            "✓ sales-order-lines 1.0.0 can be published: it is the first version of major line 1",
        );
}

#[test]
fn published_versions_are_immutable() {
    check(&[V1_0, V1_1, V1_1_EDITED])
        .assert_status(1)
        .assert_line(
            "✗ sales-order-lines 1.1.0 is already published with another schema (published hash ",
        );
    // The same schema again, spelled differently in another file, is idempotent.
    check(&[V1_0, V1_1, V1_1])
        .assert_status(0)
        .assert_line("✓ sales-order-lines 1.1.0 is already published with this schema");
}

#[test]
fn version_must_increase_within_its_line() {
    check(&[V1_1, V1_0])
        .assert_status(1)
        .assert_line("✗ sales-order-lines 1.0.0 is not greater than the published 1.1.0");
}

#[test]
fn invalid_schema_is_unusable_input() {
    let run = check(&[V1_0, "invalid-schema.yaml"]);
    run.assert_status(2)
        .assert_stderr("invalid-schema.yaml: invalid DataContract sales-order-lines 1.3.0:")
        .assert_stderr("  - spec.schema.fields[salesOrder].pattern: \"^[0-9]{1,10$\" is not a valid regular expression")
        .assert_stderr("  - spec.schema.fields[salesOrder]: duplicate field name")
        .assert_stderr("  - spec.schema.fields[orderedQuantity].default: the default does not fit its own field: \"1.2345\" has 4 digits after the decimal point, more than scale 3")
        .assert_stderr("  - spec.schema.fields[orderDate].minimum: minimum is only allowed on Int and Decimal fields")
        .assert_stderr("  - spec.schema.primaryKey[1]: \"salesOrderItem\" is not declared in schema.fields")
        .assert_stderr("  - spec.quality[quantity-plausible].field: \"quantity\" is not declared in schema.fields");
    assert!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
}

#[test]
fn unreadable_or_foreign_input_is_unusable() {
    check(&["not-a-contract.yaml", V1_1])
        .assert_status(2)
        .assert_stderr("not-a-contract.yaml: not a DataContract (apiVersion v1, kind ConfigMap");
    check(&[V1_0, "bad-version.yaml"])
        .assert_status(2)
        .assert_stderr("bad-version.yaml: invalid DataContract sales-order-lines 1.3:")
        .assert_stderr("spec.version: \"1.3\" is not a semantic version");
    check(&[V1_0, "missing.yaml"])
        .assert_status(2)
        .assert_stderr("missing.yaml: cannot read:");
    check(&[V1_0, "--mode", "Sideways"])
        .assert_status(2)
        .assert_stderr("unknown mode \"Sideways\"");
    check(&[]).assert_status(2);
}
