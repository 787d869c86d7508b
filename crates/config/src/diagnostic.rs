//! Diagnostics: every finding of a load, with its file, line, column and key path.
//!
//! Design §5 and §1.6: a load collects *all* problems rather than stopping at the first, and
//! each reads `FILE:LINE:COL: key.path: message` so an operator can jump to it. Warnings are
//! findings that do not stop the server (an ejabberd feature we ignore); errors do.

use std::fmt;

use crate::yaml::Mark;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// Logged at start; the configuration is still used.
    Warning,
}

/// One finding, located in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file as named to the loader (or the included file's resolved path).
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// Dotted key path such as `listen[0].port`; empty for the whole document.
    pub key: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// Whether this finding stops the load.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: key: message`, with `warning: ` before the key for warnings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// All findings of one load, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The findings that stop the load.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The findings that do not.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

impl fmt::Display for Diagnostics {
    /// One finding per line, then `N errors, M warnings`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let errors = self.errors().count();
        let warnings = self.warnings().count();
        write!(
            f,
            "{errors} error{}, {warnings} warning{}",
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// The collector the validator writes into.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) items: Vec<Diagnostic>,
}

impl Report {
    pub(crate) fn error(&mut self, mark: &Mark, key: &str, message: impl Into<String>) {
        self.push(Severity::Error, mark, key, message.into());
    }

    pub(crate) fn warning(&mut self, mark: &Mark, key: &str, message: impl Into<String>) {
        self.push(Severity::Warning, mark, key, message.into());
    }

    fn push(&mut self, severity: Severity, mark: &Mark, key: &str, message: String) {
        self.items.push(Diagnostic {
            severity,
            file: mark.file.to_string(),
            line: mark.line,
            column: mark.column,
            key: key.to_owned(),
            message,
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }
}

/// Message for an unknown word, with a suggestion when a candidate is close enough.
pub(crate) fn unknown<'a>(
    what: &str,
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    match did_you_mean(word, candidates) {
        Some(s) => format!("unknown {what} \"{word}\"; did you mean \"{s}\"?"),
        None => format!("unknown {what} \"{word}\""),
    }
}

/// The candidate closest to `word` by edit distance, if it is plausibly a misspelling.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // A third of the word's length, at least one and at most three edits: beyond that the
    // "suggestion" is usually a different word and only confuses.
    let limit = (word.chars().count() / 3).clamp(1, 3);
    let lowered = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lowered, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance counting an adjacent transposition as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rolling rows (two back for transpositions); `get` keeps this free of indexing panics.
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        if let Some(first) = cur.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            let del = prev.get(j + 1).copied().unwrap_or(usize::MAX) + 1;
            let ins = cur.get(j).copied().unwrap_or(usize::MAX - 1) + 1;
            let sub = prev.get(j).copied().unwrap_or(usize::MAX - 1) + cost;
            let mut best = del.min(ins).min(sub);
            if i > 0 && j > 0 && a.get(i - 1) == Some(cb) && b.get(j - 1) == Some(ca) {
                best = best.min(prev2.get(j - 1).copied().unwrap_or(usize::MAX - 1) + 1);
            }
            if let Some(slot) = cur.get_mut(j + 1) {
                *slot = best;
            }
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn mark() -> Mark {
        Mark {
            file: Arc::from("starling.yml"),
            line: 12,
            column: 3,
        }
    }

    #[test]
    fn display_error_and_warning() {
        let mut r = Report::default();
        r.error(
            &mark(),
            "listen[0].port",
            "expected an integer from 0 to 65535 (0: any free port), got \"abc\"",
        );
        r.warning(&mark(), "acme", "ignored");
        assert_eq!(
            r.items[0].to_string(),
            "starling.yml:12:3: listen[0].port: expected an integer from 0 to 65535 (0: any free port), got \"abc\""
        );
        assert_eq!(
            r.items[1].to_string(),
            "starling.yml:12:3: warning: acme: ignored"
        );
        let all = Diagnostics(r.items);
        assert!(all.has_errors());
        assert!(all.to_string().ends_with("\n1 error, 1 warning"));
        assert_eq!(Diagnostics::default().to_string(), "0 errors, 0 warnings");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("hsots", "hosts"), 1);
    }

    #[test]
    fn suggestions() {
        let keys = ["hosts", "loglevel", "listen", "modules"];
        assert_eq!(did_you_mean("host", keys), Some("hosts"));
        assert_eq!(did_you_mean("loglvel", keys), Some("loglevel"));
        assert_eq!(did_you_mean("Modules", keys), Some("modules"));
        assert_eq!(did_you_mean("zzz", keys), None);
        assert_eq!(
            unknown("option", "lisen", keys),
            "unknown option \"lisen\"; did you mean \"listen\"?"
        );
    }
}
