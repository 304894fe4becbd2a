//! The manifests under `examples/` are what platform engineers copy from, so they must be
//! accepted by the apiserver exactly as written; the manifests under `tests/invalid/` are the
//! mistakes they make, and each must be refused for the reason its header states.
//!
//! Both are checked here without a cluster, as close to the apiserver as an offline check gets:
//! - the OpenAPI schema of the generated CRD (types, enums, patterns, ranges, lengths, required
//!   fields, unknown fields as `kubectl`'s strict field validation reports them), with the
//!   apiserver's wording, so the `# expect:` lines of the invalid manifests can be checked;
//! - the CEL rules (`x-kubernetes-validations`), evaluated by kube's `cel` feature both on the
//!   manifest as written (after schema defaulting, as the apiserver does) and through the typed
//!   `validate_cel` / `validate_cel_update` the derive generates;
//! - deserialisation into the Rust types, and a round trip that must keep every key of the
//!   manifest (a key the types silently ignore is a typo the controller would never see);
//! - YAML 1.1 scalars such as `no`/`on`/`y`, which serde_yaml reads as strings but kubectl reads
//!   as booleans.
//!
//! On top of that the examples must be consistent with each other: every binding, contract and
//! code map a flow names exists in `examples/base`, and every credential Secret exists in
//! `examples/local-secrets` with the keys its auth type reads and the opt-in label.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use flowplane::api::connector_binding::AuthType;
use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::CustomResourceExt;
use kube::core::cel::cel::{Context, Program};
use kube::core::cel::{ErrorKind, ValidationErrors, Validator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const FLOWPLANE_API_VERSION: &str = "flowplane.io/v1alpha1";
/// RFC 1123 label: flowplane names children and NATS streams after its objects.
const LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// RFC 1123 subdomain: what the apiserver itself requires of an object name.
const SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
struct Doc {
    file: PathBuf,
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    fn key(&self) -> (String, String) {
        (self.kind().to_string(), self.name().to_string())
    }

    /// "examples/base/flows/x.yaml#0 IntegrationFlow/x", for failure messages.
    fn at(&self) -> String {
        let file = self.file.strip_prefix(repo()).unwrap_or(&self.file);
        format!(
            "{}#{} {}/{}",
            file.display(),
            self.index,
            self.kind(),
            self.name()
        )
    }
}

/// Every `*.yaml` below `dir`, sorted; `kustomization.yaml` files and anything under a
/// `patches/` directory (partial objects, by design) are left out.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if name != "patches" {
                    pending.push(path);
                }
            } else if name.ends_with(".yaml") && name != "kustomization.yaml" {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The non-empty YAML documents of a file, as JSON values; what keeps a document from loading
/// as kubectl would load it goes to `problems`.
fn load(path: &Path, problems: &mut Vec<String>) -> Vec<Doc> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let shown = path
        .strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string();
    for line in yaml11_booleans(&text) {
        problems.push(format!(
            "{shown}: {line}: an unquoted YAML 1.1 boolean (kubectl reads it as true/false; quote it)"
        ));
    }
    let mut docs = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        match <Value as serde::Deserialize>::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => docs.push(Doc {
                file: path.to_path_buf(),
                index,
                value,
            }),
            Err(e) => problems.push(format!("{shown}#{index}: not YAML: {e}")),
        }
    }
    docs
}

/// Plain (unquoted) scalars that YAML 1.1 - and so kubectl - reads as booleans while serde_yaml
/// (YAML 1.2) reads them as strings: `y`, `n`, `yes`, `no`, `on`, `off`.
fn yaml11_booleans(text: &str) -> Vec<String> {
    const WORDS: [&str; 6] = ["y", "n", "yes", "no", "on", "off"];
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut content = line;
        if let Some(at) = content.find(" #") {
            content = &content[..at];
        }
        if content.trim_start().starts_with('#') {
            continue;
        }
        let ambiguous = content
            .split([':', ',', '[', ']', '{', '}'])
            .map(|token| token.trim().trim_start_matches("- ").trim())
            .any(|token| WORDS.iter().any(|w| token.eq_ignore_ascii_case(w)));
        if ambiguous {
            found.push(format!("line {}: {}", number + 1, line.trim()));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Checks of one object
// ---------------------------------------------------------------------------------------------

/// Key paths of `original` that `round_trip` lost.
fn dropped_keys(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(original), Value::Object(round_trip)) => {
            for (key, value) in original {
                let path = join(path, key);
                match round_trip.get(key) {
                    Some(kept) => dropped_keys(value, kept, &path, out),
                    None => out.push(path),
                }
            }
        }
        (Value::Array(original), Value::Array(round_trip)) => {
            for (i, value) in original.iter().enumerate() {
                let path = format!("{path}[{i}]");
                match round_trip.get(i) {
                    Some(kept) => dropped_keys(value, kept, &path, out),
                    None => out.push(path),
                }
            }
        }
        (Value::Object(_) | Value::Array(_), _) => out.push(format!("{path} (changed shape)")),
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Whether `text` matches the (RE2-compatible) `pattern`, evaluated by CEL's `matches` just as
/// the apiserver's schema validation would.
fn matches(text: &str, pattern: &str) -> bool {
    let program = Program::compile("text.matches(pattern)").expect("CEL program compiles");
    let mut context = Context::default();
    context.add_variable_from_value("text", text.to_string());
    context.add_variable_from_value("pattern", pattern.to_string());
    match program.execute(&context) {
        Ok(kube::core::cel::cel::Value::Bool(b)) => b,
        other => panic!("pattern {pattern:?} could not be evaluated: {other:?}"),
    }
}

fn quoted(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// OpenAPI structural validation of `value` against `schema`, reported in the apiserver's words.
fn schema_errors(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if !schema["nullable"].as_bool().unwrap_or(false) {
            out.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            ));
        }
        return;
    }
    if let Some(expected) = schema["type"].as_str() {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            out.push(format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed.iter().map(quoted).collect();
        out.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            quoted(value),
            supported.join(", ")
        ));
    }
    match value {
        Value::String(text) => {
            if let Some(pattern) = schema["pattern"].as_str()
                && !matches(text, pattern)
            {
                out.push(format!(
                    "{path}: Invalid value: {text:?}: {path} in body should match '{pattern}'"
                ));
            }
            let length = text.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && length > max
            {
                out.push(format!(
                    "{path}: Too long: may not be more than {max} bytes"
                ));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && length < min
            {
                out.push(format!(
                    "{path}: Invalid value: {text:?}: {path} in body should be at least {min} chars long"
                ));
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap();
            if let Some(min) = schema["minimum"].as_f64()
                && n < min
            {
                out.push(format!(
                    "{path}: Invalid value: {number}: {path} in body should be greater than or equal to {min}"
                ));
            }
            if let Some(max) = schema["maximum"].as_f64()
                && n > max
            {
                out.push(format!(
                    "{path}: Invalid value: {number}: {path} in body should be less than or equal to {max}"
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                out.push(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    items.len()
                ));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                out.push(format!(
                    "{path}: Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    schema_errors(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
            if schema["x-kubernetes-list-type"].as_str() == Some("set") {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(serde_json::to_string(item).unwrap()) {
                        out.push(format!("{path}[{i}]: Duplicate value: {}", quoted(item)));
                    }
                }
            }
            if let Some(keys) = schema["x-kubernetes-list-map-keys"].as_array() {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<&Value> = keys
                        .iter()
                        .map(|k| &item[k.as_str().unwrap_or("")])
                        .collect();
                    if !seen.insert(serde_json::to_string(&key).unwrap()) {
                        out.push(format!("{path}[{i}]: Duplicate value: {key:?}"));
                    }
                }
            }
        }
        Value::Object(fields) => {
            if let Some(max) = schema["maxProperties"].as_u64()
                && fields.len() as u64 > max
            {
                out.push(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    fields.len()
                ));
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                let required = required.as_str().unwrap_or("");
                if !fields.contains_key(required) {
                    out.push(format!("{}: Required value", join(path, required)));
                }
            }
            let properties = schema["properties"].as_object();
            let preserve = schema["x-kubernetes-preserve-unknown-fields"]
                .as_bool()
                .unwrap_or(false);
            for (key, field) in fields {
                let field_path = join(path, key);
                if let Some(property) = properties.and_then(|p| p.get(key)) {
                    schema_errors(property, field, &field_path, out);
                } else if let Some(additional) = schema.get("additionalProperties")
                    && additional.is_object()
                {
                    schema_errors(additional, field, &field_path, out);
                } else if properties.is_some()
                    && !preserve
                    && !(path.is_empty()
                        && ["apiVersion", "kind", "metadata"].contains(&key.as_str()))
                {
                    out.push(format!("unknown field \"{field_path}\""));
                }
            }
        }
        _ => {}
    }
}

/// Every CEL rule of a schema with its message.
fn rule_messages(schema: &Value, out: &mut BTreeMap<String, String>) {
    match schema {
        Value::Object(node) => {
            for rule in node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(r), Some(m)) = (rule["rule"].as_str(), rule["message"].as_str()) {
                    out.insert(r.to_string(), m.to_string());
                }
            }
            node.values().for_each(|child| rule_messages(child, out));
        }
        Value::Array(items) => items.iter().for_each(|child| rule_messages(child, out)),
        _ => {}
    }
}

/// CEL errors in the apiserver's words: `<path>: Invalid value: <message>` for a rule that is
/// false, and `... <error> evaluating rule: <message>` for one that cannot be evaluated (the
/// apiserver refuses the object then too, e.g. "no such key: values evaluating rule: ...").
fn cel_errors(errors: ValidationErrors, schema: &Value, via: &str, out: &mut Vec<String>) {
    let mut messages = BTreeMap::new();
    rule_messages(schema, &mut messages);
    for error in errors.into_vec() {
        let path = if error.field_path.is_empty() {
            "<root>".to_string()
        } else {
            error.field_path.clone()
        };
        if error.kind == ErrorKind::ValidationFailure {
            out.push(format!("{path}: Invalid value: {}", error.message));
        } else {
            let message = messages.get(&error.rule).unwrap_or(&error.rule);
            out.push(format!(
                "{path}: Invalid value: \"object\": {} evaluating rule: {message} ({via}; rule: {})",
                error.message, error.rule
            ));
        }
    }
}

/// Points at the likely cause when a CEL rule could not be evaluated at all.
fn evaluation_hint(failures: &[String]) -> &'static str {
    if failures.iter().any(|f| f.contains(" evaluating rule: ")) {
        "\n\nA rule that cannot be evaluated is a bug in the rule, not in the manifest: usually it \
         reads an optional field without a has() guard, and the apiserver refuses the object with \
         \"no such key\" just the same."
    } else {
        ""
    }
}

/// The typed side of a flowplane kind: the CEL methods the derive generates.
trait FlowplaneKind: CustomResourceExt + Serialize + DeserializeOwned {
    fn cel(&self, old: Option<&Self>) -> Result<(), ValidationErrors>;
}

macro_rules! flowplane_kind {
    ($($kind:ty),*) => {$(
        impl FlowplaneKind for $kind {
            fn cel(&self, old: Option<&Self>) -> Result<(), ValidationErrors> {
                match old {
                    Some(old) => self.validate_cel_update(old),
                    None => self.validate_cel(),
                }
            }
        }
    )*};
}
flowplane_kind!(ConnectorBinding, DataContract, IntegrationFlow);

fn open_api_schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has an openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
}

fn check_flowplane<K: FlowplaneKind>(raw: &Value, old: Option<&Value>, out: &mut Vec<String>) {
    let schema = open_api_schema::<K>();
    schema_errors(&schema, raw, "", out);
    if let Err(errors) = Validator::new().validate(&schema, raw, old) {
        cel_errors(errors, &schema, "manifest as written", out);
    }
    let typed: K = match serde_json::from_value(raw.clone()) {
        Ok(typed) => typed,
        Err(e) => {
            out.push(format!("does not deserialise into {}: {e}", K::crd_name()));
            return;
        }
    };
    let mut dropped = Vec::new();
    dropped_keys(
        raw,
        &serde_json::to_value(&typed).unwrap(),
        "",
        &mut dropped,
    );
    for key in dropped {
        out.push(format!(
            "unknown field \"{key}\" (silently ignored by the Rust types)"
        ));
    }
    let old_typed: Option<K> = old.map(|old| serde_json::from_value(old.clone()).unwrap());
    if let Err(errors) = typed.cel(old_typed.as_ref()) {
        cel_errors(errors, &schema, "typed validate_cel", out);
    }
}

fn check_core<K: Serialize + DeserializeOwned>(raw: &Value, out: &mut Vec<String>) {
    match serde_json::from_value::<K>(raw.clone()) {
        Ok(typed) => {
            let mut dropped = Vec::new();
            dropped_keys(
                raw,
                &serde_json::to_value(&typed).unwrap(),
                "",
                &mut dropped,
            );
            out.extend(
                dropped
                    .into_iter()
                    .map(|k| format!("unknown field \"{k}\"")),
            );
        }
        Err(e) => out.push(format!("does not deserialise: {e}")),
    }
}

/// Everything the apiserver would refuse in `doc` (in its words where it matters); `old` is the
/// stored object when `doc` updates it.
fn check(doc: &Doc, old: Option<&Value>) -> Vec<String> {
    let raw = &doc.value;
    let mut out = Vec::new();
    let name = doc.name();
    if name.is_empty() {
        out.push("metadata.name: Required value".to_string());
    } else if name.len() > 253 || !matches(name, SUBDOMAIN_PATTERN) {
        out.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    if raw["metadata"].get("namespace").is_some() {
        out.push("metadata.namespace is set: leave it to kustomize / kubectl -n".to_string());
    }
    let api_version = raw["apiVersion"].as_str().unwrap_or("");
    let expected_api_version = match doc.kind() {
        "ConnectorBinding" | "DataContract" | "IntegrationFlow" => FLOWPLANE_API_VERSION,
        _ => "v1",
    };
    if api_version != expected_api_version {
        out.push(format!(
            "apiVersion {api_version:?}, expected {expected_api_version:?}"
        ));
    }
    match doc.kind() {
        "ConnectorBinding" => check_flowplane::<ConnectorBinding>(raw, old, &mut out),
        "DataContract" => check_flowplane::<DataContract>(raw, old, &mut out),
        "IntegrationFlow" => check_flowplane::<IntegrationFlow>(raw, old, &mut out),
        "ConfigMap" => check_core::<ConfigMap>(raw, &mut out),
        "Secret" => check_core::<Secret>(raw, &mut out),
        "Namespace" => check_core::<Namespace>(raw, &mut out),
        other => out.push(format!("unexpected kind {other:?}")),
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------------------------

#[test]
fn examples_are_valid_and_consistent() {
    let examples = repo().join("examples");
    let files = manifest_files(&examples);
    let mut failures = Vec::new();
    let docs: Vec<Doc> = files.iter().flat_map(|f| load(f, &mut failures)).collect();
    for doc in &docs {
        for error in check(doc, None) {
            failures.push(format!("{}: {error}", doc.at()));
        }
        // Stricter than the apiserver: flowplane names children and NATS streams after objects.
        if doc.name().len() > 63 || !matches(doc.name(), LABEL_PATTERN) {
            failures.push(format!(
                "{}: names must be RFC 1123 labels (lower case, at most 63 characters, no dots)",
                doc.at()
            ));
        }
    }

    // Enough of every kind that the test cannot pass vacuously.
    let count = |kind: &str| docs.iter().filter(|d| d.kind() == kind).count();
    for (kind, minimum) in [
        ("ConnectorBinding", 4),
        ("DataContract", 5),
        ("IntegrationFlow", 4),
        ("ConfigMap", 3),
        ("Secret", 3),
    ] {
        if count(kind) < minimum {
            failures.push(format!(
                "found {} {kind} documents under examples/, expected at least {minimum}",
                count(kind)
            ));
        }
    }

    // Names are unique per kind within base (kustomize would refuse duplicates).
    let base = examples.join("base");
    let in_base = |d: &&Doc| d.file.starts_with(&base);
    let mut seen = BTreeSet::new();
    for doc in docs.iter().filter(in_base) {
        if !seen.insert(doc.key()) {
            failures.push(format!("{}: duplicate {}", doc.at(), doc.kind()));
        }
    }
    let by_name = |kind: &str| -> BTreeMap<String, &Doc> {
        docs.iter()
            .filter(in_base)
            .filter(|d| d.kind() == kind)
            .map(|d| (d.name().to_string(), d))
            .collect()
    };
    let bindings = by_name("ConnectorBinding");
    let contracts = by_name("DataContract");
    let config_maps = by_name("ConfigMap");

    // Every reference of a flow resolves inside base, and the flow fits its contract.
    for flow in docs
        .iter()
        .filter(in_base)
        .filter(|d| d.kind() == "IntegrationFlow")
    {
        let spec = &flow.value["spec"];
        let mut binding_refs = vec![
            ("source.bindingRef", &spec["source"]["bindingRef"]),
            ("target.bindingRef", &spec["target"]["bindingRef"]),
        ];
        if let Some(escalation) = spec.pointer("/approval/escalateTo/bindingRef") {
            binding_refs.push(("approval.escalateTo.bindingRef", escalation));
        }
        for (field, name) in binding_refs {
            let name = name.as_str().unwrap_or("");
            if !bindings.contains_key(name) {
                failures.push(format!(
                    "{}: {field} {name:?} is not a ConnectorBinding in examples/base",
                    flow.at()
                ));
            }
        }
        for code_map in spec
            .pointer("/mapping/codeMaps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = code_map["configMapRef"].as_str().unwrap_or("");
            match config_maps.get(name) {
                None => failures.push(format!(
                    "{}: codeMaps configMapRef {name:?} is not a ConfigMap in examples/base",
                    flow.at()
                )),
                Some(cm) if cm.value["data"].as_object().is_none_or(|d| d.is_empty()) => {
                    failures.push(format!("{}: code map {name:?} has no data", cm.at()))
                }
                Some(_) => {}
            }
        }
        let contract_name = spec["contract"]["name"].as_str().unwrap_or("");
        let Some(contract) = contracts.get(contract_name) else {
            failures.push(format!(
                "{}: contract.name {contract_name:?} is not a DataContract in examples/base",
                flow.at()
            ));
            continue;
        };
        let version = contract.value["spec"]["version"].as_str().unwrap_or("");
        let range = spec["contract"]["versions"].as_str().unwrap_or("*");
        match (
            semver::Version::parse(version),
            semver::VersionReq::parse(range),
        ) {
            (Ok(version), Ok(range)) if range.matches(&version) => {}
            (version, range) => failures.push(format!(
                "{}: contract.versions {range:?} does not accept {contract_name} {version:?}",
                flow.at()
            )),
        }
        let fields: BTreeMap<&str, &str> = contract.value["spec"]["schema"]["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or(""),
                    f["type"].as_str().unwrap_or(""),
                )
            })
            .collect();
        for mapping in spec
            .pointer("/mapping/fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let to = mapping["to"].as_str().unwrap_or("");
            if !fields.contains_key(to) {
                failures.push(format!(
                    "{}: mapping.fields to {to:?} is not a field of contract {contract_name}",
                    flow.at()
                ));
            }
        }
        for field in ["valueField", "baselineField"] {
            if let Some(name) = spec.pointer(&format!("/approval/{field}")) {
                let name = name.as_str().unwrap_or("");
                if !matches!(fields.get(name), Some(&("Decimal" | "Int"))) {
                    failures.push(format!(
                        "{}: approval.{field} {name:?} is not a numeric field of contract {contract_name}",
                        flow.at()
                    ));
                }
            }
        }
    }

    // Every credential Secret a binding names exists in local-secrets with the keys it reads.
    let local_secrets: BTreeMap<&str, &Doc> = docs
        .iter()
        .filter(|d| d.file.starts_with(examples.join("local-secrets")) && d.kind() == "Secret")
        .map(|d| (d.name(), d))
        .collect();
    for binding in bindings.values() {
        let Some(secret_name) = binding
            .value
            .pointer("/spec/auth/secretRef/name")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(secret) = local_secrets.get(secret_name) else {
            failures.push(format!(
                "{}: auth.secretRef {secret_name:?} has no Secret in examples/local-secrets",
                binding.at()
            ));
            continue;
        };
        if secret.value["metadata"]["labels"]["flowplane.io/credential"] != "true" {
            failures.push(format!(
                "{}: Secret {secret_name:?} lacks the opt-in label flowplane.io/credential: \"true\"",
                binding.at()
            ));
        }
        let auth_type: AuthType =
            serde_json::from_value(binding.value["spec"]["auth"]["type"].clone()).unwrap();
        let mut keys: BTreeSet<&str> = BTreeSet::new();
        for data in ["data", "stringData"] {
            if let Some(map) = secret.value[data].as_object() {
                keys.extend(map.keys().map(String::as_str));
            }
        }
        let wanted: BTreeSet<&str> = auth_type.required_secret_keys().iter().copied().collect();
        if keys != wanted {
            failures.push(format!(
                "{}: keys {keys:?}, but auth type {auth_type:?} of {} reads {wanted:?}",
                secret.at(),
                binding.name()
            ));
        }
        let fake = secret.value["stringData"]
            .as_object()
            .is_some_and(|m| m.values().all(|v| v.as_str() == Some("local-demo-only")));
        if !fake {
            failures.push(format!(
                "{}: local demo Secrets hold only the value \"local-demo-only\" (as stringData)",
                secret.at()
            ));
        }
    }

    // base/kustomization.yaml lists exactly the manifests of base; overlays point at files that
    // exist and give themselves a namespace.
    let listed = kustomization_resources(&base);
    let on_disk: BTreeSet<String> = manifest_files(&base)
        .iter()
        .map(|f| f.strip_prefix(&base).unwrap().to_string_lossy().to_string())
        .collect();
    if listed != on_disk {
        failures.push(format!(
            "examples/base/kustomization.yaml resources {listed:?} differ from the files in base {on_disk:?}"
        ));
    }
    let overlays = examples.join("overlays");
    let mut overlay_count = 0;
    for overlay in fs::read_dir(&overlays).unwrap() {
        let overlay = overlay.unwrap().path();
        overlay_count += 1;
        let kustomization = read_kustomization(&overlay);
        if kustomization["namespace"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            failures.push(format!("{}: no namespace", overlay.display()));
        }
        let mut paths: Vec<String> = kustomization_resources(&overlay).into_iter().collect();
        for patch in kustomization["patches"].as_sequence().into_iter().flatten() {
            let path = patch["path"].as_str().unwrap_or("").to_string();
            if !path.starts_with("patches/") {
                failures.push(format!(
                    "{}: patch {path:?} is not under patches/",
                    overlay.display()
                ));
            }
            paths.push(path);
        }
        for path in paths {
            if !overlay.join(&path).exists() {
                failures.push(format!("{}: {path:?} does not exist", overlay.display()));
            }
        }
    }
    if overlay_count < 2 {
        failures.push(format!(
            "found {overlay_count} overlays, expected eu and us"
        ));
    }

    assert!(
        failures.is_empty(),
        "{} problem(s) in examples/:\n{}{}",
        failures.len(),
        failures.join("\n"),
        evaluation_hint(&failures)
    );
}

fn read_kustomization(dir: &Path) -> serde_yaml::Value {
    let path = dir.join("kustomization.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kustomization_resources(dir: &Path) -> BTreeSet<String> {
    read_kustomization(dir)["resources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The invalid manifests
// ---------------------------------------------------------------------------------------------

/// The `# expect:` lines at the top of an invalid manifest.
fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|line| line.starts_with('#') || line.trim().is_empty())
        .filter_map(|line| line.strip_prefix("# expect:"))
        .map(|e| e.trim().to_string())
        .collect()
}

#[test]
fn invalid_manifests_are_refused_for_the_reason_they_state() {
    let dir = repo().join("tests").join("invalid");
    let files = manifest_files(&dir);
    assert!(
        files.len() >= 30,
        "expected at least 30 invalid manifests in tests/invalid, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    let mut numbers = BTreeSet::new();
    for file in &files {
        let file_name = file.file_name().unwrap().to_string_lossy().to_string();
        let number = file_name.split('-').next().unwrap_or("");
        if !(2..=3).contains(&number.len()) || !number.chars().all(|c| c.is_ascii_digit()) {
            failures.push(format!(
                "{file_name}: name is not NN-short-description.yaml (NN: two or three digits)"
            ));
        } else if !numbers.insert(number.to_string()) {
            failures.push(format!("{file_name}: number {number} is used twice"));
        }
        let text = fs::read_to_string(file).unwrap();
        let expected = expectations(&text);
        if expected.is_empty() {
            failures.push(format!("{file_name}: no `# expect:` header line"));
        }
        let docs = load(file, &mut failures);
        let Some((invalid, setup)) = docs.split_last() else {
            failures.push(format!("{file_name}: no YAML document"));
            continue;
        };
        // Setup objects are created (or updated) first and must be valid.
        let mut store: BTreeMap<(String, String), Value> = BTreeMap::new();
        for doc in setup {
            let errors = check(doc, store.get(&doc.key()));
            if !errors.is_empty() {
                failures.push(format!(
                    "{}: setup document is refused: {errors:?}",
                    doc.at()
                ));
            }
            store.insert(doc.key(), doc.value.clone());
        }
        let errors = check(invalid, store.get(&invalid.key()));
        if errors.is_empty() {
            failures.push(format!(
                "{}: accepted, but it should be refused ({expected:?})",
                invalid.at()
            ));
            continue;
        }
        let text = errors.join("\n");
        for expectation in &expected {
            if !text.contains(expectation.as_str()) {
                failures.push(format!(
                    "{}: `# expect: {expectation}` is not in the errors:\n    {}",
                    invalid.at(),
                    errors.join("\n    ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) in tests/invalid/:\n{}{}",
        failures.len(),
        failures.join("\n"),
        evaluation_hint(&failures)
    );
}

// ---------------------------------------------------------------------------------------------
// The checker itself
// ---------------------------------------------------------------------------------------------

#[test]
fn dropped_keys_finds_nested_keys_the_types_ignore() {
    let original = serde_json::json!({"spec": {"auth": {"type": "Basic", "password": "x"}, "list": [{"a": 1, "b": 2}]}});
    let round_trip = serde_json::json!({"spec": {"auth": {"type": "Basic"}, "list": [{"a": 1}]}});
    let mut dropped = Vec::new();
    dropped_keys(&original, &round_trip, "", &mut dropped);
    assert_eq!(dropped, ["spec.auth.password", "spec.list[0].b"]);
}

#[test]
fn yaml11_booleans_are_found_outside_quotes_and_comments() {
    let text =
        "data:\n  NO: \"x\"\n  \"DE\": \"y\"\n  flag: on  # on\n# no\nlist: [a, off]\n- yes\n";
    assert_eq!(
        yaml11_booleans(text).len(),
        4,
        "{:?}",
        yaml11_booleans(text)
    );
}
