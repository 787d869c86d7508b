//! The spanned YAML tree the validator walks.
//!
//! serde-saphyr parses the text (alias budget, no panics); every node of the document is read
//! through `Spanned<_>` so each value and each mapping key keeps the line and column it came
//! from. Keeping our own small tree instead of deriving `Deserialize` on the config types is
//! what lets the validator report *every* problem: serde derive stops at the first.
//!
//! Duplicate mapping keys are passed through (not rejected by the parser) so that the
//! validator can report them with the others.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, Spanned};

/// Where a node starts: file (as named in diagnostics), 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) file: Arc<str>,
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// A YAML value with its position.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) mark: Mark,
}

/// The YAML data model the loader needs; floats are kept only to report them as wrong types.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar as text, as ejabberd would read it (keys and atoms), if it is a scalar.
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// The string value, if this node is a string scalar.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short description of the node for "got ..." messages.
    pub(crate) fn describe(&self) -> String {
        match &self.value {
            Value::Null => "an empty value".to_owned(),
            Value::Bool(b) => format!("{b}"),
            Value::Int(i) => format!("{i}"),
            Value::Float(f) => format!("{f}"),
            Value::Str(s) => format!("{s:?}"),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }
}

/// A parse failure: position and the parser's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// Parses one YAML document into a spanned tree. An empty document is `Value::Null`.
pub(crate) fn parse(text: &str, file: &Arc<str>) -> Result<Node, ParseError> {
    // Plain `yes`/`no`/`on`/`off` stay strings here; the validator accepts them where ejabberd
    // does (booleans) and nowhere else, so a host or atom named `on` is not mangled.
    let options = serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        strict_booleans: true,
        with_snippet: false,
    };
    if text.trim().is_empty() {
        return Ok(Node {
            value: Value::Null,
            mark: Mark {
                file: file.clone(),
                line: 1,
                column: 1,
            },
        });
    }
    match serde_saphyr::from_str_with_options::<Option<Spanned<Raw>>>(text, options) {
        Ok(Some(root)) => Ok(into_node(root, file)),
        Ok(None) => Ok(Node {
            value: Value::Null,
            mark: Mark {
                file: file.clone(),
                line: 1,
                column: 1,
            },
        }),
        Err(err) => {
            let (line, column) = err
                .location()
                .map_or((0, 0), |l| (to_usize(l.line()), to_usize(l.column())));
            Err(ParseError {
                line,
                column,
                message: clean_message(&err.to_string()),
            })
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The parser's message without its own "at line X column Y" suffix, which we print in front.
fn clean_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    let cut = first
        .find(" at line ")
        .map_or(first, |i| first.get(..i).unwrap_or(first));
    cut.trim_start_matches("error: ").to_owned()
}

fn into_node(spanned: Spanned<Raw>, file: &Arc<str>) -> Node {
    let mark = Mark {
        file: file.clone(),
        line: to_usize(spanned.referenced.line()),
        column: to_usize(spanned.referenced.column()),
    };
    let value = match spanned.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(|n| into_node(n, file)).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (into_node(k, file), into_node(v, file)))
                .collect(),
        ),
    };
    Node { value, mark }
}

/// The untyped value as serde-saphyr hands it to us, children spanned.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Self>>),
    Map(Vec<(Spanned<Self>, Spanned<Self>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        // Beyond i64 nothing in a config makes sense; keep the digits for the error message.
        Ok(i64::try_from(v).map_or_else(|_| Raw::Str(v.to_string()), Raw::Int))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or_else(|_| Raw::Str(v.to_string()), Raw::Int))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or_else(|_| Raw::Str(v.to_string()), Raw::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Raw>>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("t.yml")
    }

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let root = parse("hosts:\n  - example.org\nport: 5222\n", &file()).unwrap();
        let entries = map(&root);
        assert_eq!(entries[0].0.as_str(), Some("hosts"));
        assert_eq!((entries[0].0.mark.line, entries[0].0.mark.column), (1, 1));
        let Value::Seq(items) = &entries[0].1.value else {
            panic!()
        };
        assert_eq!(items[0].as_str(), Some("example.org"));
        assert_eq!((items[0].mark.line, items[0].mark.column), (2, 5));
        assert_eq!(entries[1].1.value, Value::Int(5222));
        assert_eq!((entries[1].1.mark.line, entries[1].1.mark.column), (3, 7));
    }

    #[test]
    fn scalar_types() {
        let root = parse("a: true\nb: \"5\"\nc: yes\nd: ~\ne: 1.5\n", &file()).unwrap();
        let values: Vec<_> = map(&root).iter().map(|(_, v)| v.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Bool(true),
                Value::Str("5".into()),
                Value::Str("yes".into()),
                Value::Null,
                Value::Float(1.5)
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_kept() {
        let root = parse("a: 1\na: 2\n", &file()).unwrap();
        assert_eq!(map(&root).len(), 2);
    }

    #[test]
    fn syntax_error_has_a_position() {
        let err = parse("a: [1, 2\nb: 3\n", &file()).unwrap_err();
        assert!(err.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
        assert!(!err.message.contains("at line"), "{}", err.message);
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("# nothing\n", &file()).unwrap().value, Value::Null);
        assert_eq!(parse("", &file()).unwrap().value, Value::Null);
    }

    #[test]
    fn aliases_are_expanded() {
        let root = parse("a: &x [1]\nb: *x\n", &file()).unwrap();
        let Value::Seq(items) = &map(&root)[1].1.value else {
            panic!()
        };
        assert_eq!(items[0].value, Value::Int(1));
    }
}
