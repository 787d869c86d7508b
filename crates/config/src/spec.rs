//! Module option declarations and their validated values.
//!
//! Modules declare their options as [`OptionSpec`] tables (Design §2.2, "modules declare");
//! the loader checks `modules:` against them and hands each module typed [`ModuleOptions`],
//! never raw YAML. Durations use ejabberd's spellings (`30`, `"30 s"`, `"5 min"`, `"1 hour"`,
//! `infinity`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diagnostic::{Report, unknown};
use crate::yaml::{Node, Value};

/// One option a module accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// The key in `modules: {mod_x: {KEY: ...}}`.
    pub name: &'static str,
    /// What values it takes.
    pub kind: OptionKind,
    /// One line for `docs/CONFIG.md`.
    pub doc: &'static str,
}

/// The type of a module option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// `true`/`false` (also ejabberd's `yes`/`no`/`on`/`off`).
    Bool,
    /// An integer in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// An integer `>= min` or `infinity`; read back through [`ModuleOptions::int`], where
    /// infinity is `i64::MAX`.
    IntOrInfinity {
        /// Smallest accepted value.
        min: i64,
    },
    /// Any string (integers are accepted and kept as text, like ejabberd's atoms).
    String,
    /// One of the listed words.
    Enum(&'static [&'static str]),
    /// A duration: an integer number of seconds, `"N UNIT"` (ms, s, min, h, days) or
    /// `infinity` (read back as `Duration::MAX`).
    Duration,
    /// A list of strings (a single string is taken as a one-element list).
    StringList,
    /// The name of an access rule, or an inline rule such as `[{allow: admin}]`.
    AccessRule,
    /// Any YAML value, kept as an [`OptionValue`] tree.
    Any,
    /// An ejabberd option this module accepts but ignores: a warning, not an error.
    Unsupported,
}

/// A module this build knows: canonical name, short aliases, options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleSpec {
    /// Canonical name, e.g. `mod_roster`.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// The options it declares.
    pub options: &'static [OptionSpec],
}

/// A validated option value.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string (or an access rule name).
    String(String),
    /// A list.
    List(Vec<Self>),
    /// A mapping, in file order.
    Map(Vec<(String, Self)>),
    /// A duration.
    Duration(Duration),
    /// ejabberd's `infinity`.
    Infinity,
}

/// A module's validated options. Only options present in the file are here; defaults are the
/// module's business.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModuleOptions {
    values: BTreeMap<String, OptionValue>,
}

impl ModuleOptions {
    /// No options set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an option (for tests and built-in defaults).
    pub fn insert(&mut self, key: impl Into<String>, value: OptionValue) {
        self.values.insert(key.into(), value);
    }

    /// The value as given, if set.
    pub fn value(&self, key: &str) -> Option<&OptionValue> {
        self.values.get(key)
    }

    /// A boolean option.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.value(key)? {
            OptionValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// An integer option; `infinity` reads as `i64::MAX`.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.value(key)? {
            OptionValue::Int(i) => Some(*i),
            OptionValue::Infinity => Some(i64::MAX),
            _ => None,
        }
    }

    /// A string option (also an access rule name).
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.value(key)? {
            OptionValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A list of strings.
    pub fn strings(&self, key: &str) -> Option<Vec<String>> {
        match self.value(key)? {
            OptionValue::List(items) => items
                .iter()
                .map(|v| match v {
                    OptionValue::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            OptionValue::String(s) => Some(vec![s.clone()]),
            _ => None,
        }
    }

    /// A duration; `infinity` reads as `Duration::MAX`.
    pub fn duration(&self, key: &str) -> Option<Duration> {
        match self.value(key)? {
            OptionValue::Duration(d) => Some(*d),
            OptionValue::Infinity => Some(Duration::MAX),
            _ => None,
        }
    }

    /// All options, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OptionValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A copy with `@HOST@` replaced by `host` in every string.
    pub(crate) fn expand_host(&self, host: &str) -> Self {
        Self {
            values: self
                .values
                .iter()
                .map(|(k, v)| (k.clone(), expand_value(v, host)))
                .collect(),
        }
    }
}

fn expand_value(value: &OptionValue, host: &str) -> OptionValue {
    match value {
        OptionValue::String(s) => OptionValue::String(s.replace("@HOST@", host)),
        OptionValue::List(items) => {
            OptionValue::List(items.iter().map(|v| expand_value(v, host)).collect())
        }
        OptionValue::Map(entries) => OptionValue::Map(
            entries
                .iter()
                .map(|(k, v)| (k.replace("@HOST@", host), expand_value(v, host)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Resolves an `AccessRule` option: returns the rule name to store, reporting problems.
pub(crate) type AccessResolver<'a> = dyn FnMut(&Node, &str, &mut Report) -> Option<String> + 'a;

/// Checks `node` against `kind`; reports and returns `None` when it does not fit.
pub(crate) fn convert(
    node: &Node,
    kind: OptionKind,
    key: &str,
    report: &mut Report,
    access: &mut AccessResolver<'_>,
) -> Option<OptionValue> {
    let bad = |report: &mut Report, expected: &str| {
        report.error(
            &node.mark,
            key,
            format!("expected {expected}, got {}", node.describe()),
        );
        None
    };
    match kind {
        OptionKind::Bool => match as_bool(node) {
            Some(b) => Some(OptionValue::Bool(b)),
            None => bad(report, "true or false"),
        },
        OptionKind::Int { min, max } => match node.value {
            Value::Int(i) if (min..=max).contains(&i) => Some(OptionValue::Int(i)),
            _ => bad(report, &format!("an integer from {min} to {max}")),
        },
        OptionKind::IntOrInfinity { min } => match &node.value {
            Value::Int(i) if *i >= min => Some(OptionValue::Int(*i)),
            Value::Str(s) if is_infinity(s) => Some(OptionValue::Infinity),
            _ => bad(report, &format!("an integer of at least {min} or infinity")),
        },
        OptionKind::String => match &node.value {
            Value::Str(s) => Some(OptionValue::String(s.clone())),
            Value::Int(i) => Some(OptionValue::String(i.to_string())),
            _ => bad(report, "a string"),
        },
        OptionKind::Enum(words) => {
            let text = node.scalar_text();
            match text {
                Some(t) if words.contains(&t.as_str()) => Some(OptionValue::String(t)),
                Some(t) => {
                    report.error(
                        &node.mark,
                        key,
                        format!("expected one of {}, got {t:?}", words.join(", ")),
                    );
                    None
                }
                None => bad(report, &format!("one of {}", words.join(", "))),
            }
        }
        OptionKind::Duration => match parse_duration(node) {
            Ok(v) => Some(v),
            Err(()) => bad(
                report,
                "a duration such as 30, \"30 s\", \"5 min\" or infinity",
            ),
        },
        OptionKind::StringList => match &node.value {
            Value::Str(s) => Some(OptionValue::List(vec![OptionValue::String(s.clone())])),
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match &item.value {
                        Value::Str(s) => out.push(OptionValue::String(s.clone())),
                        Value::Int(n) => out.push(OptionValue::String(n.to_string())),
                        _ => {
                            report.error(
                                &item.mark,
                                &format!("{key}[{i}]"),
                                format!("expected a string, got {}", item.describe()),
                            );
                        }
                    }
                }
                Some(OptionValue::List(out))
            }
            _ => bad(report, "a list of strings"),
        },
        OptionKind::AccessRule => access(node, key, report).map(OptionValue::String),
        OptionKind::Any => Some(to_any(node)),
        OptionKind::Unsupported => {
            report.warning(
                &node.mark,
                key,
                "this ejabberd option is not supported yet, ignored",
            );
            None
        }
    }
}

/// ejabberd's boolean spellings.
pub(crate) fn as_bool(node: &Node) -> Option<bool> {
    match &node.value {
        Value::Bool(b) => Some(*b),
        Value::Str(s) => match s.as_str() {
            "yes" | "on" | "Yes" | "On" | "YES" | "ON" => Some(true),
            "no" | "off" | "No" | "Off" | "NO" | "OFF" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// ejabberd's spellings of "no limit".
pub(crate) fn is_infinity(s: &str) -> bool {
    matches!(s, "infinity" | "infinite" | "unlimited")
}

/// A plain YAML value as an `OptionValue` (`Any` options).
pub(crate) fn to_any(node: &Node) -> OptionValue {
    match &node.value {
        Value::Null => OptionValue::Map(Vec::new()),
        Value::Bool(b) => OptionValue::Bool(*b),
        Value::Int(i) => OptionValue::Int(*i),
        Value::Float(f) => OptionValue::String(f.to_string()),
        Value::Str(s) if is_infinity(s) => OptionValue::Infinity,
        Value::Str(s) => OptionValue::String(s.clone()),
        Value::Seq(items) => OptionValue::List(items.iter().map(to_any).collect()),
        Value::Map(entries) => OptionValue::Map(
            entries
                .iter()
                .map(|(k, v)| (k.scalar_text().unwrap_or_default(), to_any(v)))
                .collect(),
        ),
    }
}

/// Parses a duration node; integers are seconds, as in ejabberd's timeouts.
pub(crate) fn parse_duration(node: &Node) -> Result<OptionValue, ()> {
    match &node.value {
        Value::Int(i) => u64::try_from(*i)
            .map(|s| OptionValue::Duration(Duration::from_secs(s)))
            .map_err(|_| ()),
        Value::Str(s) if is_infinity(s.trim()) => Ok(OptionValue::Infinity),
        Value::Str(s) => parse_duration_text(s).map(OptionValue::Duration),
        _ => Err(()),
    }
}

/// `"30 s"`, `"5min"`, `"1 hour"`, `"250 ms"`, `"2 days"`.
pub(crate) fn parse_duration_text(text: &str) -> Result<Duration, ()> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| ())?;
    let ms_per_unit: u64 = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or(())
}

/// Validates one module's option mapping against its spec. `ejabberd_options` are the names
/// ejabberd documents for this module: those we do not declare are warnings, not errors.
pub(crate) fn check_module_options(
    spec: &ModuleSpec,
    node: &Node,
    path: &str,
    ejabberd_options: &[&str],
    report: &mut Report,
    access: &mut AccessResolver<'_>,
) -> ModuleOptions {
    let mut options = ModuleOptions::new();
    let entries = match &node.value {
        Value::Null => return options,
        Value::Map(entries) => entries,
        _ => {
            report.error(
                &node.mark,
                path,
                format!(
                    "expected a mapping of options (or {{}}), got {}",
                    node.describe()
                ),
            );
            return options;
        }
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in entries {
        let Some(name) = k.scalar_text() else {
            report.error(&k.mark, path, "option names must be plain words");
            continue;
        };
        let key = format!("{path}.{name}");
        if seen.contains(&name) {
            report.error(&k.mark, &key, "set more than once");
            continue;
        }
        seen.push(name.clone());
        if let Some(opt) = spec.options.iter().find(|o| o.name == name) {
            if let Some(value) = convert(v, opt.kind, &key, report, access) {
                options.insert(name, value);
            }
        } else if crate::ejabberd::GENERIC_MODULE_OPTIONS.contains(&name.as_str())
            || ejabberd_options.contains(&name.as_str())
        {
            report.warning(
                &k.mark,
                &key,
                "this ejabberd option is not supported yet, ignored",
            );
        } else {
            report.error(
                &k.mark,
                &key,
                unknown("option", &name, spec.options.iter().map(|o| o.name)),
            );
        }
    }
    options
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::yaml::parse;

    fn node(text: &str) -> Node {
        parse(text, &Arc::from("t.yml")).unwrap()
    }

    fn conv(text: &str, kind: OptionKind) -> (Option<OptionValue>, Vec<String>) {
        let mut report = Report::default();
        let mut access = |n: &Node, _: &str, _: &mut Report| n.as_str().map(str::to_owned);
        let v = convert(&node(text), kind, "k", &mut report, &mut access);
        (v, report.items.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn durations() {
        let d = |t: &str| conv(t, OptionKind::Duration).0;
        assert_eq!(
            d("30"),
            Some(OptionValue::Duration(Duration::from_secs(30)))
        );
        assert_eq!(
            d("\"30 s\""),
            Some(OptionValue::Duration(Duration::from_secs(30)))
        );
        assert_eq!(
            d("5 min"),
            Some(OptionValue::Duration(Duration::from_secs(300)))
        );
        assert_eq!(
            d("1 hour"),
            Some(OptionValue::Duration(Duration::from_secs(3600)))
        );
        assert_eq!(
            d("250ms"),
            Some(OptionValue::Duration(Duration::from_millis(250)))
        );
        assert_eq!(
            d("2 days"),
            Some(OptionValue::Duration(Duration::from_secs(172_800)))
        );
        assert_eq!(d("infinity"), Some(OptionValue::Infinity));
        assert_eq!(d("-1"), None);
        assert_eq!(d("99999999999999999 days"), None);
        let (_, diags) = conv("5 fortnights", OptionKind::Duration);
        assert_eq!(
            diags,
            vec![
                "t.yml:1:1: k: expected a duration such as 30, \"30 s\", \"5 min\" or infinity, got \"5 fortnights\""
            ]
        );
    }

    #[test]
    fn scalars() {
        assert_eq!(
            conv("on", OptionKind::Bool).0,
            Some(OptionValue::Bool(true))
        );
        assert_eq!(
            conv("false", OptionKind::Bool).0,
            Some(OptionValue::Bool(false))
        );
        assert_eq!(
            conv("7", OptionKind::Int { min: 0, max: 10 }).0,
            Some(OptionValue::Int(7))
        );
        let (v, diags) = conv("11", OptionKind::Int { min: 0, max: 10 });
        assert_eq!(v, None);
        assert_eq!(
            diags,
            vec!["t.yml:1:1: k: expected an integer from 0 to 10, got 11"]
        );
        assert_eq!(
            conv("infinity", OptionKind::IntOrInfinity { min: 0 }).0,
            Some(OptionValue::Infinity)
        );
        let (_, diags) = conv("kil", OptionKind::Enum(&["none", "kill"]));
        assert_eq!(
            diags,
            vec!["t.yml:1:1: k: expected one of none, kill, got \"kil\""]
        );
        assert_eq!(
            conv("[a, 5]", OptionKind::StringList).0,
            Some(OptionValue::List(vec![
                OptionValue::String("a".into()),
                OptionValue::String("5".into())
            ]))
        );
        assert_eq!(conv("x", OptionKind::Unsupported).1.len(), 1);
    }

    #[test]
    fn options_accessors_and_host_expansion() {
        let mut o = ModuleOptions::new();
        o.insert("url", OptionValue::String("https://@HOST@/up".into()));
        o.insert(
            "list",
            OptionValue::List(vec![OptionValue::String("@HOST@".into())]),
        );
        o.insert("max", OptionValue::Infinity);
        o.insert("t", OptionValue::Duration(Duration::from_secs(3)));
        let e = o.expand_host("example.org");
        assert_eq!(e.string("url"), Some("https://example.org/up"));
        assert_eq!(e.strings("list"), Some(vec!["example.org".to_owned()]));
        assert_eq!(e.int("max"), Some(i64::MAX));
        assert_eq!(e.duration("t"), Some(Duration::from_secs(3)));
        assert_eq!(e.duration("max"), Some(Duration::MAX));
        assert_eq!(e.bool("url"), None);
        assert_eq!(e.iter().count(), 4);
    }
}
