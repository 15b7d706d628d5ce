//! `${ENV}` interpolation in scalar values.
//!
//! Secrets never live in pipeline YAML: a value such as `${KAFKA_PASSWORD}` is replaced by the
//! environment variable when the file is loaded. The syntax follows docker compose and Vector:
//!
//! - `${NAME}`: the variable's value; an unset variable is an error.
//! - `${NAME:-default}`: the default when the variable is unset or empty.
//! - `$$`: a literal `$`. A `$` followed by anything else is kept as it is, so SQL such as
//!   `regexp_like(sku, '^A.*$')` needs no escaping.
//!
//! Interpolation works on scalar values after YAML parsing, never on the raw text, so a
//! variable cannot inject YAML structure, and positions stay those of the file.

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpError {
    /// `${NAME}` with `NAME` not set.
    Unset(String),
    /// `${` with no closing `}` or a name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    Malformed(String),
}

impl std::fmt::Display for InterpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpError::Unset(name) => write!(
                f,
                "environment variable `{name}` is not set; export it, or give a default with `${{{name}:-value}}`"
            ),
            InterpError::Malformed(text) => write!(
                f,
                "malformed interpolation `{text}`: expected `${{NAME}}` or `${{NAME:-default}}` (write `$$` for a literal `$`)"
            ),
        }
    }
}

/// Where `${NAME}` values come from: the process environment for `pipectl`, only the
/// variables the operator exposes for the daemon (see docs/security.md).
pub trait Env {
    /// The value of `name`, if this environment has it.
    fn get(&self, name: &str) -> Option<String>;
    /// Whether `name` is a secret: it may only be the whole value of a secret Kafka property
    /// (`sasl.password: ${NAME}`), never part of a topic, SQL or anything else that can be
    /// written out or shown.
    fn is_secret(&self, _name: &str) -> bool {
        false
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The variables a text may refer to, looked up once: an [`Env`] that can move to another
/// thread (planning runs on a thread of its own) and that resolves nothing else.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    vars: std::collections::HashMap<String, (Option<String>, bool)>,
}

impl Snapshot {
    /// Looks up in `env` every name that `text` writes as `${NAME` (anywhere: an over-count
    /// costs a lookup, never a value in the pipeline).
    pub fn of(text: &str, env: &dyn Env) -> Self {
        let mut vars = std::collections::HashMap::new();
        for (i, _) in text.match_indices("${") {
            let rest = &text[i + 2..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            if is_env_name(name) && !vars.contains_key(name) {
                vars.insert(name.to_string(), (env.get(name), env.is_secret(name)));
            }
        }
        Self { vars }
    }
}

impl Env for Snapshot {
    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).and_then(|(v, _)| v.clone())
    }
    fn is_secret(&self, name: &str) -> bool {
        self.vars.get(name).is_some_and(|(_, s)| *s)
    }
}

/// Whether `text` asks for interpolation at all (cheap check before allocating).
pub fn has_interpolation(text: &str) -> bool {
    text.contains('$')
}

/// Replaces every `${NAME}` in `text` using `lookup`. Collects every error rather than stopping
/// at the first, so one run reports all unset variables.
pub fn interpolate(text: &str, lookup: &dyn Env) -> Result<String, Vec<InterpError>> {
    interpolate_names(text, lookup).map(|(value, _)| value)
}

/// [`interpolate`], also returning the names of the variables the text refers to, in order.
pub fn interpolate_names(
    text: &str,
    lookup: &dyn Env,
) -> Result<(String, Vec<String>), Vec<InterpError>> {
    let mut names = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                errors.push(InterpError::Malformed(rest[i..].to_string()));
                return Err(errors);
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !is_env_name(name) {
                errors.push(InterpError::Malformed(format!("${{{inner}}}")));
            } else {
                names.push(name.to_string());
                match (
                    lookup
                        .get(name)
                        .filter(|v| !v.is_empty() || default.is_none()),
                    default,
                ) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(InterpError::Unset(name.to_string())),
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok((out, names))
    } else {
        Err(errors)
    }
}

/// The variable name when `text` is exactly `${NAME}` (no default, nothing around it).
pub fn exact_reference(text: &str) -> Option<&str> {
    let name = text.strip_prefix("${")?.strip_suffix('}')?;
    is_env_name(name).then_some(name)
}

/// Whether `name` can name a variable: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("alice".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables() {
        assert_eq!(interpolate("u=${USER}!", &env).as_deref(), Ok("u=alice!"));
        assert_eq!(
            interpolate("${USER}${USER}", &env).as_deref(),
            Ok("alicealice")
        );
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(interpolate("${NOPE:-x}", &env).as_deref(), Ok("x"));
        assert_eq!(interpolate("${EMPTY:-x}", &env).as_deref(), Ok("x"));
        assert_eq!(interpolate("${USER:-x}", &env).as_deref(), Ok("alice"));
        // Empty without a default is a value, not an error.
        assert_eq!(interpolate("[${EMPTY}]", &env).as_deref(), Ok("[]"));
    }

    #[test]
    fn dollar_escapes_and_plain_dollars() {
        assert_eq!(interpolate("$${USER}", &env).as_deref(), Ok("${USER}"));
        assert_eq!(interpolate("'^A.*$'", &env).as_deref(), Ok("'^A.*$'"));
        assert_eq!(interpolate("cost $5", &env).as_deref(), Ok("cost $5"));
        assert_eq!(interpolate("end$", &env).as_deref(), Ok("end$"));
    }

    #[test]
    fn reports_every_unset_variable() {
        assert_eq!(
            interpolate("${A}-${USER}-${B}", &env),
            Err(vec![
                InterpError::Unset("A".into()),
                InterpError::Unset("B".into())
            ])
        );
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            interpolate("${USER", &env),
            Err(e) if e == vec![InterpError::Malformed("${USER".into())]
        ));
        assert!(matches!(
            interpolate("${1X}", &env),
            Err(e) if e == vec![InterpError::Malformed("${1X}".into())]
        ));
        let msg = InterpError::Unset("PW".into()).to_string();
        assert!(msg.contains("`PW` is not set"), "{msg}");
    }
}
