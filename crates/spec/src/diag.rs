//! Located diagnostics: every problem the language finds is a [`Diagnostic`] that names the
//! field (a dotted path such as `spec.models[0].regression.half_life`) and, through the
//! [`SourceMap`](crate::SourceMap), the line and column in the user's file.

use std::fmt;

/// A 1-based line and column in the pipeline file (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl Pos {
    /// A position from 1-based line and column.
    pub fn new(line: usize, col: usize) -> Self {
        Self { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where in the file; always set once the diagnostic has passed through a source map.
    pub pos: Option<Pos>,
    /// The field the problem is about, as a dotted path (empty for the whole document).
    pub path: String,
    /// What is wrong and, where we can tell, how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic about the field at `path`, to be located later by a source map.
    pub fn at_path(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pos: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// Renders as `FILE:LINE:COL: error: PATH: MESSAGE`, the form compilers use so that
    /// editors and terminals can jump to the spot.
    pub fn render(&self, file: &str) -> String {
        let pos = self.pos.unwrap_or(Pos::new(1, 1));
        if self.path.is_empty() {
            format!("{file}:{pos}: error: {}", self.message)
        } else {
            format!("{file}:{pos}: error: {}: {}", self.path, self.message)
        }
    }
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(f64, &'a str)> = None;
    for candidate in candidates {
        let distance = strsim::damerau_levenshtein(word, candidate);
        let longest = word.chars().count().max(candidate.chars().count()).max(1);
        // Accept up to about a third of the letters wrong, and at least one edit.
        if distance > (longest / 3).max(1) {
            continue;
        }
        let score = strsim::normalized_damerau_levenshtein(word, candidate);
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// `", did you mean `x`?"` or nothing.
pub fn suggestion<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match did_you_mean(word, candidates) {
        Some(c) => format!(", did you mean `{c}`?"),
        None => String::new(),
    }
}

/// Formats a list of names as `` `a`, `b`, `c` `` for "expected one of" messages.
pub fn one_of<'a, I>(names: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    let names: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let fields = ["target", "features", "half_life", "ridge"];
        assert_eq!(did_you_mean("half_lfe", fields), Some("half_life"));
        assert_eq!(did_you_mean("featurs", fields), Some("features"));
        assert_eq!(did_you_mean("colour", fields), None);
        assert_eq!(did_you_mean("x", ["y"]), Some("y"));
        assert_eq!(did_you_mean("ab", ["xyz"]), None);
    }

    #[test]
    fn renders_compiler_style() {
        let mut d = Diagnostic::at_path("spec.sources[0].name", "bad name");
        d.pos = Some(Pos::new(7, 13));
        assert_eq!(
            d.render("p.yaml"),
            "p.yaml:7:13: error: spec.sources[0].name: bad name"
        );
    }
}
