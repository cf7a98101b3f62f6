//! JSON Schema validation of action input and output (reference section 4.6), with
//! errors in the array shape NS8's UI understands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use jsonschema::{Draft, Registry, Validator};
use protocol::task::ValidationError;
use serde_json::Value;

/// Why a schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("validator-definitions.json: {0}")]
    Definitions(jsonschema::ReferencingError),
    #[error("{0}")]
    Invalid(Box<jsonschema::ValidationError<'static>>),
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    /// The schema file at `path` does not compile.
    #[error("{}: {source}", path.display())]
    Compile { path: PathBuf, source: Box<SchemaError> },
}

/// Compile a schema. `definitions` is the agent's `validator-definitions.json`, which
/// schemas reference by its `$id`. Schemas without `$schema` are read as draft-07, the
/// draft NS8's schemas are written for.
pub fn compile(schema: &Value, definitions: Option<&Value>) -> Result<Validator, SchemaError> {
    let mut options = jsonschema::options().should_validate_formats(true);
    if schema.get("$schema").is_none() {
        options = options.with_draft(Draft::Draft7);
    }
    let registry;
    if let Some(defs) = definitions {
        let uri = defs.get("$id").and_then(Value::as_str).unwrap_or("validator-definitions.json");
        registry =
            Registry::new().add(uri, defs.clone()).and_then(|r| r.prepare()).map_err(SchemaError::Definitions)?;
        options = options.with_registry(&registry);
        return options.build(schema).map_err(|e| SchemaError::Invalid(Box::new(e)));
    }
    options.build(schema).map_err(|e| SchemaError::Invalid(Box::new(e)))
}

/// Validate and map every error to `{field, parameter, value, error}`.
pub fn check(validator: &Validator, instance: &Value) -> Vec<ValidationError> {
    validator.iter_errors(instance).map(|e| to_ns8(&e)).collect()
}

/// gojsonschema's error type names, which NS8's UI keys its messages on.
fn rule_name(kind: &jsonschema::error::ValidationErrorKind) -> &'static str {
    use jsonschema::error::ValidationErrorKind as K;
    match kind {
        K::Required { .. } => "required",
        K::Type { .. } => "invalid_type",
        K::Enum { .. } => "enum",
        K::Constant { .. } => "const",
        K::Pattern { .. } => "pattern",
        K::Format { .. } => "format",
        K::MinLength { .. } => "string_gte",
        K::MaxLength { .. } => "string_lte",
        K::Minimum { .. } => "number_gte",
        K::Maximum { .. } => "number_lte",
        K::ExclusiveMinimum { .. } => "number_gt",
        K::ExclusiveMaximum { .. } => "number_lt",
        K::MultipleOf { .. } => "multiple_of",
        K::MinItems { .. } => "array_min_items",
        K::MaxItems { .. } => "array_max_items",
        K::UniqueItems => "unique",
        K::Contains => "contains",
        K::AdditionalProperties { .. } => "additional_property_not_allowed",
        K::AdditionalItems { .. } => "array_no_additional_items",
        K::MinProperties { .. } => "array_min_properties",
        K::MaxProperties { .. } => "array_max_properties",
        K::AnyOf { .. } => "number_any_of",
        K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => "number_one_of",
        K::Not { .. } => "number_not",
        K::FalseSchema => "false",
        K::PropertyNames { .. } => "invalid_property_name",
        _ => "invalid",
    }
}

fn to_ns8(e: &jsonschema::ValidationError<'_>) -> ValidationError {
    let mut path: Vec<String> = e.instance_path().into_iter().map(|seg| seg.to_string()).collect();
    // For a missing property gojsonschema names the property itself.
    if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind()
        && let Some(p) = property.as_str()
    {
        path.push(p.to_owned());
    }
    let field = if path.is_empty() { "(root)".to_owned() } else { path.join(".") };
    let parameter = path.first().cloned().unwrap_or_else(|| "(root)".to_owned());
    ValidationError {
        error: format!("{parameter}_{}", rule_name(e.kind())),
        field,
        parameter,
        value: e.instance().clone().into_owned(),
    }
}

/// A schema's JSON and the definitions it may reference: what masking reads to find
/// the fields the schema declares secret.
#[derive(Debug, Default)]
pub struct SchemaSource {
    pub schema: Value,
    pub definitions: Option<Value>,
}

type Entry = (Option<SystemTime>, Arc<Validator>, Arc<SchemaSource>);

/// Compiled schemas of script actions, recompiled when the file changes (an update
/// replaces action files while the agent runs).
#[derive(Default)]
pub struct SchemaCache {
    /// `validator-definitions.json`, used when it exists.
    definitions_path: PathBuf,
    entries: Mutex<HashMap<PathBuf, Entry>>,
}

impl SchemaCache {
    pub fn new(definitions_path: PathBuf) -> Self {
        SchemaCache { definitions_path, entries: Mutex::default() }
    }

    pub fn get(&self, path: &Path) -> Result<Arc<Validator>, SchemaError> {
        self.get_with_source(path).map(|(v, _)| v)
    }

    /// The compiled schema and its source.
    pub fn get_with_source(&self, path: &Path) -> Result<(Arc<Validator>, Arc<SchemaSource>), SchemaError> {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let defs_path = Some(self.definitions_path.as_path()).filter(|p| p.exists());
        // The stamp covers the definitions file too: a changed $ref target recompiles.
        let stamp = mtime(path).max(defs_path.and_then(mtime));
        if let Some((s, v, src)) = self.entries.lock().expect("schema cache poisoned").get(path)
            && *s == stamp
            && stamp.is_some()
        {
            return Ok((v.clone(), src.clone()));
        }
        let read = |p: &Path| -> Result<Value, SchemaError> {
            let text = std::fs::read_to_string(p).map_err(|source| SchemaError::Read { path: p.to_owned(), source })?;
            serde_json::from_str(&text).map_err(|source| SchemaError::Json { path: p.to_owned(), source })
        };
        let schema = read(path)?;
        let defs = defs_path.map(read).transpose()?;
        let validator = Arc::new(
            compile(&schema, defs.as_ref())
                .map_err(|e| SchemaError::Compile { path: path.to_owned(), source: Box::new(e) })?,
        );
        let source = Arc::new(SchemaSource { schema, definitions: defs });
        self.entries
            .lock()
            .expect("schema cache poisoned")
            .insert(path.to_owned(), (stamp, validator.clone(), source.clone()));
        Ok((validator, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_have_the_ns8_shape() {
        let schema = json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 2},
                "port": {"type": "integer", "maximum": 65535},
                "nested": {"type": "object", "properties": {"ip": {"type": "string", "format": "ipv4"}}}
            }
        });
        let v = compile(&schema, None).unwrap();
        assert!(check(&v, &json!({"name": "ok"})).is_empty());
        let errs = check(&v, &json!({"port": 70000, "nested": {"ip": "300.1.1.1"}}));
        let by_error: Vec<_> = errs.iter().map(|e| (e.field.as_str(), e.error.as_str())).collect();
        assert!(by_error.contains(&("name", "name_required")), "{by_error:?}");
        assert!(by_error.contains(&("port", "port_number_lte")), "{by_error:?}");
        assert!(by_error.contains(&("nested.ip", "nested_format")), "{by_error:?}");
        let port = errs.iter().find(|e| e.field == "port").unwrap();
        assert_eq!(port.value, json!(70000));
        assert_eq!(port.parameter, "port");
        let root = check(&v, &json!([]));
        assert_eq!(root[0].field, "(root)");
        assert_eq!(root[0].error, "(root)_invalid_type");
    }

    #[test]
    fn definitions_are_resolved_by_id() {
        let defs = json!({
            "$id": "http://schema.nethserver.org/cluster.json",
            "definitions": {"cidr": {"type": "string", "pattern": "^[0-9.]+/[0-9]+$"}}
        });
        let schema = json!({"type": "object", "properties": {
            "network": {"$ref": "http://schema.nethserver.org/cluster.json#/definitions/cidr"}}});
        let v = compile(&schema, Some(&defs)).unwrap();
        assert!(check(&v, &json!({"network": "10.5.4.0/24"})).is_empty());
        let errs = check(&v, &json!({"network": "nope"}));
        assert_eq!(errs[0].error, "network_pattern");
        // Without the definitions the reference cannot resolve: a clear compile error.
        assert!(compile(&schema, None).is_err());
    }
}
