//! Diagnostics: where a problem is (field path, line, column) and how it is shown.

use std::{fmt, ops::Range};

/// Byte range of a key or value in the file.
pub type Span = Range<usize>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    /// Array index, with the element's `name` when it has one.
    Index(usize, Option<String>),
}

/// A path to a field, shown as `service[1] (www).backend[0].address`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Seg>);

impl FieldPath {
    /// The root table.
    pub fn root() -> FieldPath {
        FieldPath::default()
    }

    pub fn key(&self, key: &str) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        FieldPath(segs)
    }

    pub fn index(&self, index: usize, name: Option<&str>) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index, name.map(str::to_owned)));
        FieldPath(segs)
    }

    /// The last key of the path (`weight` in `service[0].backend[1].weight`).
    pub fn last_key(&self) -> Option<&str> {
        self.0.iter().rev().find_map(|seg| match seg {
            Seg::Key(key) => Some(key.as_str()),
            Seg::Index(..) => None,
        })
    }

    /// The TOML table header of this path, indices left out: `service.backend`.
    pub fn header(&self) -> String {
        let keys: Vec<&str> = self
            .0
            .iter()
            .filter_map(|seg| match seg {
                Seg::Key(key) => Some(key.as_str()),
                Seg::Index(..) => None,
            })
            .collect();
        keys.join(".")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index, None) => write!(f, "[{index}]")?,
                Seg::Index(index, Some(name)) => write!(f, "[{index}] ({name})")?,
            }
        }
        Ok(())
    }
}

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field path (`service[1] (www).backend[0].weight`); empty for a
    /// problem of the whole file (a TOML syntax error, a file that cannot be read).
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), given for problems of the file's shape
    /// (syntax, unknown key, wrong TOML type) where the exact spot helps.
    pub column: Option<usize>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl Problem {
    /// Where the problem is, as shown before its message:
    /// `service[0] (www).vip (line 7)`, `daemon.mode (line 3, column 1)`,
    /// `line 2, column 21`, or `service` when there is no line to point at.
    pub fn location(&self) -> String {
        let at = match (self.line, self.column) {
            (Some(line), Some(column)) => format!("line {line}, column {column}"),
            (Some(line), None) => format!("line {line}"),
            (None, _) => String::new(),
        };
        match (self.path.is_empty(), at.is_empty()) {
            (false, false) => format!("{} ({at})", self.path),
            (false, true) => self.path.clone(),
            (true, _) => at,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = self.location();
        if location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{location}: {}", self.message)
        }
    }
}

/// A configuration that cannot be used, with every problem found. Shown as
/// the header `invalid configuration FILE (N problems)` and one line per
/// problem, `FILE: FIELD (line L): MESSAGE`: what `xlb check`, `xlb run` and
/// a refused reload all print.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file as given (or the name passed to [`super::parse`]).
    pub file: String,
    /// Never empty; in file order, problems without a line last.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let plural = if n == 1 { "" } else { "s" };
        write!(f, "invalid configuration {} ({n} problem{plural})", self.file)?;
        for problem in &self.problems {
            write!(f, "\n{}: {problem}", self.file)?;
        }
        Ok(())
    }
}

/// Collects problems, placing each by its span in the text.
pub struct Diagnostics<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(text: &'a str) -> Self {
        Diagnostics { text, problems: Vec::new() }
    }

    /// A problem with a value: shown with its line (at `span`, the value or,
    /// for a missing key, its table; no line when there is none).
    pub fn report(&mut self, path: &FieldPath, span: Option<Span>, message: impl Into<String>) {
        let line = span.map(|s| line_col(self.text, s.start).0);
        self.problems.push(Problem { path: path.to_string(), line, column: None, message: message.into() });
    }

    /// A problem with the file's shape: shown with its line and column.
    pub fn report_exact(&mut self, path: &FieldPath, span: Span, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem {
            path: path.to_string(),
            line: Some(line),
            column: Some(column),
            message: message.into(),
        });
    }

    /// What TOML itself could not read, with its place and its own message.
    pub fn report_toml(&mut self, error: &toml::de::Error) {
        let Some(span) = error.span() else {
            self.problems.push(Problem {
                path: String::new(),
                line: None,
                column: None,
                message: error.message().to_owned(),
            });
            return;
        };
        let mut message = error.message().to_owned();
        let snippet = self.text.get(span.clone()).unwrap_or("");
        if !snippet.is_empty() && snippet.len() <= 40 && !snippet.contains('\n') {
            message = format!("{message}: `{snippet}`");
        }
        self.report_exact(&FieldPath::root(), span, message);
    }

    /// The problems in file order, those without a line last; `None` when there is none.
    pub fn finish(mut self) -> Option<Vec<Problem>> {
        if self.problems.is_empty() {
            return None;
        }
        self.problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        Some(self.problems)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// The candidate `word` is most likely a typo of: one edit away (two for
/// words longer than five characters), a swap of neighbours counting as one.
pub fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = if word.chars().count() > 5 { 2 } else { 1 };
    candidates
        .iter()
        .map(|&c| (edit_distance(&word.to_ascii_lowercase(), c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of adjacent characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i characters of a and the first j of b.
    let mut d: Vec<Vec<usize>> =
        (0..=a.len()).map(|i| (0..=b.len()).map(|j| if i == 0 { j } else { i }).collect()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_show_indices_and_names() {
        let path = FieldPath::root().key("service").index(1, Some("www")).key("backend").index(0, None).key("weight");
        assert_eq!(path.to_string(), "service[1] (www).backend[0].weight");
        assert_eq!(path.header(), "service.backend.weight");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 5), (1, 1));
    }

    #[test]
    fn problems_show_what_they_know() {
        let p = |path: &str, line, column| Problem { path: path.into(), line, column, message: "m".into() };
        assert_eq!(p("daemon.mode", Some(3), Some(1)).to_string(), "daemon.mode (line 3, column 1): m");
        assert_eq!(p("service[0] (www).vip", Some(7), None).to_string(), "service[0] (www).vip (line 7): m");
        assert_eq!(p("", Some(2), Some(21)).to_string(), "line 2, column 21: m");
        assert_eq!(p("service", None, None).to_string(), "service: m");
        assert_eq!(p("", None, None).to_string(), "m");
    }

    #[test]
    fn config_error_has_a_header_and_one_line_per_problem() {
        let p = |path: &str, line| Problem { path: path.into(), line: Some(line), column: None, message: "bad".into() };
        let one = ConfigError { file: "/etc/xlb.toml".into(), problems: vec![p("daemon.interfaces", 2)] };
        assert_eq!(
            one.to_string(),
            "invalid configuration /etc/xlb.toml (1 problem)\n/etc/xlb.toml: daemon.interfaces (line 2): bad"
        );
        let two = ConfigError { file: "x.toml".into(), problems: vec![p("a", 1), p("b", 2)] };
        assert_eq!(
            two.to_string(),
            "invalid configuration x.toml (2 problems)\nx.toml: a (line 1): bad\nx.toml: b (line 2): bad"
        );
    }

    #[test]
    fn problems_come_in_file_order() {
        let text = "a\nb\nc\n";
        let mut d = Diagnostics::new(text);
        d.report(&FieldPath::root().key("none"), None, "no line");
        d.report(&FieldPath::root().key("c"), Some(4..5), "third line");
        d.report_exact(&FieldPath::root().key("a"), 0..1, "first line");
        let lines: Vec<Option<usize>> = d.finish().expect("three problems").iter().map(|p| p.line).collect();
        assert_eq!(lines, [Some(1), Some(3), None]);
        assert_eq!(Diagnostics::new(text).finish(), None);
    }

    #[test]
    fn closest_catches_typos_only() {
        let keys = ["address", "weight", "role"];
        assert_eq!(closest("wieght", &keys), Some("weight"), "a swap");
        assert_eq!(closest("Weight", &keys), Some("weight"), "case");
        assert_eq!(closest("adress", &keys), Some("address"), "a missing letter");
        assert_eq!(closest("port", &keys), None);
        assert_eq!(closest("rule", &keys), Some("role"));
        assert_eq!(closest("host", &["path", "port"]), None, "two edits in a short word is another word");
    }
}
