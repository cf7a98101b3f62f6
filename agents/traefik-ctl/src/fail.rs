//! How an action fails: NS8's validation errors (exit code 10, the error array on
//! stdout) or a plain failure (a message on stderr, exit code 1).

use std::io::Write;
use std::process::ExitCode;

use protocol::actions::Refusal;
use protocol::task::ValidationError;
use serde_json::Value;

#[derive(Debug)]
pub enum Failure {
    /// NS8's error array; an entry may carry more than NS8's four fields (`owner`,
    /// `detail`), which its clients ignore.
    Invalid(Vec<Value>),
    Failed(String),
}

impl Failure {
    pub fn failed(message: impl Into<String>) -> Self {
        Failure::Failed(message.into())
    }

    /// One invalid field: `error` is `<parameter>_<reason>` as NS8 spells it.
    pub fn invalid(parameter: &str, value: Value, error: impl Into<String>) -> Self {
        let e = ValidationError {
            field: parameter.to_owned(),
            parameter: parameter.to_owned(),
            value,
            error: error.into(),
        };
        Failure::Invalid(vec![serde_json::to_value(e).unwrap_or(Value::Null)])
    }

    pub fn refuse<R: Refusal>(r: R, value: Value) -> Self {
        Self::refuse_with(r, value, &[])
    }

    /// A refusal with more said: who holds what was asked for, what Traefik answered.
    pub fn refuse_with<R: Refusal>(r: R, value: Value, extra: &[(&str, String)]) -> Self {
        let mut v = serde_json::to_value(r.to_validation(value)).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            for (k, x) in extra {
                o.insert((*k).to_owned(), Value::String(x.clone()));
            }
        }
        Failure::Invalid(vec![v])
    }

    /// A field refused with the reason in words (`detail`); the value is not echoed
    /// (a certificate or a key).
    pub fn refuse_with_field(parameter: &str, error: &str, detail: &str) -> Self {
        let mut f = Self::invalid(parameter, Value::String("(PEM)".into()), error);
        if let Failure::Invalid(v) = &mut f
            && let Some(o) = v[0].as_object_mut()
        {
            o.insert("detail".into(), Value::String(detail.to_owned()));
        }
        f
    }

    pub fn report(self) -> ExitCode {
        match self {
            Failure::Invalid(errors) => {
                println!("{}", Value::Array(errors.clone()));
                // NS8's way of saying it, on the command fd when there is one.
                if std::env::var_os(protocol::stepenv::AGENT_COMFD).is_some()
                    && let Ok(mut fd) = std::fs::OpenOptions::new().write(true).open("/proc/self/fd/3")
                {
                    let _ = writeln!(fd, "set-status validation-failed");
                }
                for e in &errors {
                    let more: String = ["owner", "detail"]
                        .iter()
                        .filter_map(|k| Some(format!("; {k}: {}", e.get(*k)?.as_str()?)))
                        .collect();
                    eprintln!(
                        "invalid {}: {}{more}",
                        e["parameter"].as_str().unwrap_or(""),
                        e["error"].as_str().unwrap_or("")
                    );
                }
                ExitCode::from(protocol::exit::VALIDATION_FAILED as u8)
            }
            Failure::Failed(m) => {
                eprintln!("{m}");
                ExitCode::FAILURE
            }
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Failed(e.to_string())
    }
}
