//! Which task fields are secret, and their masking (`"XXX"`, NS8's replacement value).
//!
//! A field is secret when its name says so ([`is_secret_name`]) or when the action's
//! input JSON Schema declares it (`"writeOnly": true` or `"format": "password"`, at any
//! depth). The agents mask what they store as a task's context; the api-server masks
//! what it writes to the audit trail; both use the functions here, so the two cannot
//! disagree on what a secret is.

use serde_json::{Map, Value};

use crate::task::ValidationError;

/// What a secret value is replaced with (NS8's value).
pub const MASK: &str = "XXX";

/// Words that make a field secret wherever they appear in its name: `db_password`,
/// `passwordHint` (over-masking a hint costs nothing), `x-auth-token`, `session_id`.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwords",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "tokens",
    "jwt",
    "apikey",
    "credential",
    "credentials",
    "creds",
    "auth",
    "otp",
    "totp",
    "hotp",
    "cookie",
    "cookies",
    "session",
    "sessions",
    "privatekey",
    "secretkey",
    "accesskey",
    "pin",
];

/// Endings of a name written as one word (`adminpass`, `dbpassword`, `ldapsecret`).
const SECRET_ENDINGS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pass",
    "secret",
    "secrets",
    "token",
    "jwt",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "credentials",
];

/// `key` or `keys` as the last word is a secret (`private_key`, `api_key`, `sshKeys`,
/// plain `key`); as another word it is not (`key_type`, `key_id`, `keySize`), and
/// neither is a word that merely ends with it (`monkey`, `hotkey`).
const SECRET_LAST_WORDS: &[&str] = &["key", "keys"];

/// The words of a field name: split at anything not a letter or digit and at
/// lowercase-to-uppercase changes, lowercased (`apiKey` → `api`, `key`).
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Whether a field named `name` holds a secret, judging by the name alone.
pub fn is_secret_name(name: &str) -> bool {
    let words = words(name);
    if words.iter().any(|w| SECRET_WORDS.contains(&w.as_str())) {
        return true;
    }
    if words.last().is_some_and(|w| SECRET_LAST_WORDS.contains(&w.as_str())) {
        return true;
    }
    let joined: String = words.concat();
    SECRET_ENDINGS.iter().any(|e| joined.ends_with(e))
}

/// Replace the value of every object member whose name looks secret with `"XXX"`,
/// recursively through objects and arrays. For values with no schema (the audit trail,
/// the queue listing).
pub fn mask_secrets(value: &Value) -> Value {
    Masker { root: None, definitions: None }.mask(value, &[], 0)
}

/// Mask a whole task object: names everywhere, and `data` also by the action's input
/// schema (`definitions` is the agent's `validator-definitions.json`, which schemas may
/// reference).
pub fn mask_task(task: &Value, data_schema: Option<&Value>, definitions: Option<&Value>) -> Value {
    let mut masked = mask_secrets(task);
    if let (Some(data), Some(slot)) = (task.get("data"), masked.get_mut("data"))
        && !slot.is_string()
    {
        *slot = mask_data(data, data_schema, definitions);
    }
    masked
}

/// Mask a task's `data` by names and by its input schema.
pub fn mask_data(data: &Value, schema: Option<&Value>, definitions: Option<&Value>) -> Value {
    let schemas: Vec<&Value> = schema.into_iter().collect();
    Masker { root: schema, definitions }.mask(data, &schemas, 0)
}

/// Validation errors carry the offending value, which for a secret field is the
/// secret itself: replace it with its masked form. `data` is the input the errors
/// are about; each error's `field` is its dotted path in it.
pub fn mask_validation_errors(
    errors: &mut [ValidationError],
    data: &Value,
    schema: Option<&Value>,
    definitions: Option<&Value>,
) {
    if errors.is_empty() {
        return;
    }
    let masked = mask_data(data, schema, definitions);
    for e in errors.iter_mut() {
        let path: Vec<&str> =
            if e.field == "(root)" || e.field.is_empty() { Vec::new() } else { e.field.split('.').collect() };
        // The value is the node at the error's path, or at its parent (a missing
        // required member is reported on the object): the longest prefix whose
        // original node is the reported value gives the masked value.
        let found = (0..=path.len()).rev().find_map(|n| {
            let original = walk(data, &path[..n])?;
            if *original == e.value { walk(&masked, &path[..n]).cloned() } else { None }
        });
        e.value = match found {
            Some(v) => v,
            // Not found in the input (an action's own error): names only, and a
            // secret-looking path hides the value whole.
            None if path.iter().any(|p| is_secret_name(p)) => Value::String(MASK.into()),
            None => mask_secrets(&e.value),
        };
    }
}

fn walk<'v>(mut v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    for seg in path {
        v = match v {
            Value::Object(m) => m.get(*seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Schemas nest and reference each other; past this depth a (recursive) schema is no
/// longer followed and only names count.
const MAX_DEPTH: usize = 64;

struct Masker<'a> {
    root: Option<&'a Value>,
    definitions: Option<&'a Value>,
}

impl<'a> Masker<'a> {
    /// Mask `value` under every schema in `schemas` (all apply: secret if any says so).
    fn mask(&self, value: &Value, schemas: &[&'a Value], depth: usize) -> Value {
        let mut applied = Vec::new();
        if depth <= MAX_DEPTH {
            for s in schemas {
                self.expand(s, depth, &mut applied);
            }
        }
        if applied.iter().any(|s| declares_secret(s)) {
            return Value::String(MASK.into());
        }
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let masked = if is_secret_name(k) {
                            Value::String(MASK.into())
                        } else {
                            self.mask(v, &member_schemas(&applied, k), depth + 1)
                        };
                        (k.clone(), masked)
                    })
                    .collect::<Map<String, Value>>(),
            ),
            Value::Array(items) => {
                items.iter().enumerate().map(|(i, v)| self.mask(v, &item_schemas(&applied, i), depth + 1)).collect()
            }
            other => other.clone(),
        }
    }

    /// `schema` and, recursively, the subschemas that apply to the same instance:
    /// `$ref` targets, `allOf`/`anyOf`/`oneOf` members, `if`/`then`/`else`.
    fn expand(&self, schema: &'a Value, depth: usize, out: &mut Vec<&'a Value>) {
        if depth > MAX_DEPTH || !schema.is_object() {
            return;
        }
        out.push(schema);
        if let Some(target) = schema.get("$ref").and_then(Value::as_str).and_then(|r| self.resolve(r)) {
            self.expand(target, depth + 1, out);
        }
        for k in ["allOf", "anyOf", "oneOf"] {
            for s in schema.get(k).and_then(Value::as_array).into_iter().flatten() {
                self.expand(s, depth + 1, out);
            }
        }
        for k in ["if", "then", "else"] {
            if let Some(s) = schema.get(k) {
                self.expand(s, depth + 1, out);
            }
        }
    }

    /// A `$ref`: `#/...` in the action's schema, anything else in the definitions
    /// document (NS8's schemas reference `validator-definitions.json` by its `$id`).
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let (doc, fragment) = match reference.split_once('#') {
            Some(("", f)) => (self.root?, f),
            Some((_, f)) => (self.definitions?, f),
            None => (self.definitions?, ""),
        };
        if fragment.is_empty() { Some(doc) } else { doc.pointer(fragment) }
    }
}

/// Whether a schema declares its instance secret.
fn declares_secret(schema: &Value) -> bool {
    schema.get("writeOnly").and_then(Value::as_bool) == Some(true)
        || schema.get("format").and_then(Value::as_str) == Some("password")
}

/// The subschemas that apply to member `name` of an object under `schemas`:
/// `properties`, else `additionalProperties`; and any `patternProperties` entry that
/// declares a secret (patterns are not evaluated here: a secret pattern masks every
/// member not named in `properties`, erring on the safe side).
fn member_schemas<'b>(schemas: &[&'b Value], name: &str) -> Vec<&'b Value> {
    let mut out = Vec::new();
    for s in schemas {
        let named = s.get("properties").and_then(|p| p.get(name));
        match named {
            Some(p) => out.push(p),
            None => {
                if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                    out.push(a);
                }
                for p in s.get("patternProperties").and_then(Value::as_object).into_iter().flat_map(|m| m.values()) {
                    if declares_secret(p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// The subschemas that apply to item `i` of an array: `items` (one schema, or draft 7's
/// tuple form with `additionalItems`), `prefixItems` (2020-12).
fn item_schemas<'b>(schemas: &[&'b Value], i: usize) -> Vec<&'b Value> {
    let mut out = Vec::new();
    for s in schemas {
        let prefix = s.get("prefixItems").and_then(Value::as_array);
        match (s.get("items"), prefix) {
            (_, Some(tuple)) if i < tuple.len() => out.push(&tuple[i]),
            (Some(Value::Array(tuple)), _) if i < tuple.len() => out.push(&tuple[i]),
            (Some(Value::Array(_)), _) => {
                if let Some(a) = s.get("additionalItems").filter(|a| a.is_object()) {
                    out.push(a);
                }
            }
            (Some(items), _) if items.is_object() => out.push(items),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_names() {
        let secret = [
            "password",
            "admin_password",
            "ldapPassword",
            "dbpassword",
            "passwd",
            "pwd",
            "db-pwd",
            "passphrase",
            "backup_passphrase",
            "secret",
            "secrets",
            "client_secret",
            "token",
            "refresh_token",
            "bearerToken",
            "x-auth-token",
            "jwt",
            "api_key",
            "apikey",
            "apiKey",
            "API_KEY",
            "private_key",
            "secret_key",
            "access_key",
            "AWS_SECRET_ACCESS_KEY",
            "ssh_keys",
            "key",
            "credentials",
            "credential",
            "auth",
            "basic_auth",
            "otp",
            "totp",
            "cookie",
            "session",
            "session_id",
            "adminpass",
            "admpass",
            "ldap_pass",
            "pin",
            "SecretKey",
        ];
        for name in secret {
            assert!(is_secret_name(name), "{name} should be secret");
        }
        let harmless = [
            "name",
            "user",
            "username",
            "email",
            "host",
            "port",
            "key_type",
            "keyType",
            "key_id",
            "keySize",
            "monkey",
            "hotkey",
            "keyboard",
            "author",
            "authority",
            "passenger",
            "tokenizer",
            "opinion",
            "spin",
            "description",
            "allowed_networks",
            "2fa",
            "",
        ];
        for name in harmless {
            assert!(!is_secret_name(name), "{name} should not be secret");
        }
        // Deliberate over-masking: a word ending in "pass" may be NS8's `adminpass`.
        assert!(is_secret_name("bypass"));
    }

    #[test]
    fn names_are_masked_everywhere() {
        let task = json!({
            "data": {"admin_password": "p", "name": "n", "nested": {"api_token": "t"},
                     "list": [{"ldap_pass": "l", "keep": 1}], "SecretKey": "s", "key_type": "rsa"},
            "extra": {"x_secret": "y"}
        });
        assert_eq!(
            mask_secrets(&task),
            json!({
                "data": {"admin_password": "XXX", "name": "n", "nested": {"api_token": "XXX"},
                         "list": [{"ldap_pass": "XXX", "keep": 1}], "SecretKey": "XXX", "key_type": "rsa"},
                "extra": {"x_secret": "XXX"}
            })
        );
    }

    #[test]
    fn schema_declared_secrets_are_masked_at_any_depth() {
        let schema = json!({
            "type": "object",
            "definitions": {"cred": {"type": "string", "writeOnly": true}},
            "properties": {
                "login": {"type": "string", "format": "password"},
                "remote": {"type": "object", "properties": {"word": {"$ref": "#/definitions/cred"}, "host": {}}},
                "accounts": {"type": "array", "items": {"properties": {"phrase": {"writeOnly": true}, "uid": {}}}},
                "pair": {"type": "array", "items": [{"type": "string"}, {"format": "password"}]},
                "more": {"allOf": [{"properties": {"hidden": {"writeOnly": true}}}]},
                "map": {"type": "object", "additionalProperties": {"format": "password"}},
                "blob": {"type": "object", "writeOnly": true},
                "ext": {"$ref": "validator-definitions.json#/definitions/sealed"},
                "plain": {"type": "string", "writeOnly": false}
            }
        });
        let defs = json!({"$id": "validator-definitions.json", "definitions": {"sealed": {"writeOnly": true}}});
        let data = json!({
            "login": "l1", "remote": {"word": "w1", "host": "h"},
            "accounts": [{"phrase": "p1", "uid": 1}, {"phrase": "p2", "uid": 2}],
            "pair": ["visible", "t2"], "more": {"hidden": "m1", "shown": "s"},
            "map": {"a": "x1", "b": "x2"}, "blob": {"deep": 1}, "ext": "e1", "plain": "ok",
            "token": "by name"
        });
        let masked = mask_data(&data, Some(&schema), Some(&defs));
        assert_eq!(
            masked,
            json!({
                "login": "XXX", "remote": {"word": "XXX", "host": "h"},
                "accounts": [{"phrase": "XXX", "uid": 1}, {"phrase": "XXX", "uid": 2}],
                "pair": ["visible", "XXX"], "more": {"hidden": "XXX", "shown": "s"},
                "map": {"a": "XXX", "b": "XXX"}, "blob": "XXX", "ext": "XXX", "plain": "ok",
                "token": "XXX"
            })
        );
        // Without the schema only the name is caught.
        assert_eq!(mask_data(&data, None, None)["login"], "l1");
        // A whole task: names everywhere, the schema on `data` only.
        let task = json!({"id": "t", "action": "a", "data": data, "extra": {"login": "kept", "jwt": "j"}});
        let masked = mask_task(&task, Some(&schema), Some(&defs));
        assert_eq!(masked["data"]["login"], "XXX");
        assert_eq!(masked["extra"], json!({"login": "kept", "jwt": "XXX"}));
        let text = masked.to_string();
        for s in ["l1", "w1", "p1", "p2", "t2", "m1", "x1", "x2", "e1", "by name"] {
            assert!(!text.contains(s), "{s} leaked: {text}");
        }
    }

    #[test]
    fn recursive_and_broken_schemas_do_not_hang_or_panic() {
        let schema = json!({
            "$ref": "#/definitions/node",
            "definitions": {"node": {"properties": {"child": {"$ref": "#/definitions/node"}, "s": {"writeOnly": true}}}},
            "properties": {"missing": {"$ref": "#/definitions/nothing"}, "other": {"$ref": "elsewhere.json#/x"}}
        });
        let data = json!({"child": {"child": {"s": "deep"}}, "s": "top", "missing": 1, "other": 2});
        let masked = mask_data(&data, Some(&schema), None);
        assert_eq!(masked, json!({"child": {"child": {"s": "XXX"}}, "s": "XXX", "missing": 1, "other": 2}));
        assert_eq!(mask_data(&json!("x"), Some(&json!(true)), None), json!("x"));
    }

    #[test]
    fn validation_errors_do_not_echo_secrets() {
        let schema = json!({"properties": {"login": {"format": "password", "minLength": 20}, "nest": {}}});
        let data = json!({"login": "short1", "nest": {"password": "pw9", "n": 1}, "port": 99999});
        let err = |field: &str, value: Value| ValidationError {
            field: field.into(),
            parameter: field.split('.').next().unwrap().into(),
            value,
            error: "x".into(),
        };
        let mut errors = vec![
            err("login", json!("short1")),
            err("nest.password", json!("pw9")),
            err("nest.required_thing", data["nest"].clone()),
            err("port", json!(99999)),
            err("api_token", json!("from the action itself")),
            err("elsewhere", json!({"secret": "s3"})),
        ];
        mask_validation_errors(&mut errors, &data, Some(&schema), None);
        let values: Vec<&Value> = errors.iter().map(|e| &e.value).collect();
        assert_eq!(
            values,
            [
                &json!("XXX"),
                &json!("XXX"),
                &json!({"password": "XXX", "n": 1}),
                &json!(99999),
                &json!("XXX"),
                &json!({"secret": "XXX"})
            ]
        );
    }
}
