//! Reading keys for validation: their TOML type, enums, integer ranges,
//! unknown keys, every problem collected with its field path and line. The
//! tables are checked in their own modules ([`super::daemon`],
//! [`super::service`], [`super::health`], [`super::backend`]), which use
//! this one; [`super::parse`] ties them together.

use super::{
    checks,
    diag::{closest, Diagnostics, FieldPath, Problem, Span},
    raw::{Expect, Found, Item, Kind, Spanned, Typed},
};

/// Marks a value of the wrong TOML type, already reported: callers skip the
/// checks that would only repeat it (such as "missing").
#[derive(Debug)]
pub struct Reported;

/// A key as read: absent (`Ok(None)`), or its value with its place.
pub type Read<T> = Result<Option<Spanned<T>>, Reported>;

/// Reads keys and collects problems.
pub struct Validator<'a> {
    diag: Diagnostics<'a>,
}

impl<'a> Validator<'a> {
    pub fn new(text: &'a str) -> Self {
        Validator { diag: Diagnostics::new(text) }
    }

    /// Reports a problem with a value at `span` (or, for a missing key, its table's).
    pub fn report(&mut self, path: &FieldPath, span: Option<Span>, message: impl Into<String>) {
        self.diag.report(path, span, message);
    }

    /// Reports what TOML itself could not read.
    pub fn report_toml(&mut self, error: &toml::de::Error) {
        self.diag.report_toml(error);
    }

    pub fn finish(self) -> Option<Vec<Problem>> {
        self.diag.finish()
    }

    /// Reports each key of the table at `path` that is not one of `keys`.
    pub fn unknown_keys(&mut self, path: &FieldPath, unknown: &[Spanned<String>], keys: &[&str]) {
        for key in unknown {
            let name = key.get_ref();
            let hint = closest(name, keys).map_or_else(String::new, |k| format!(" (did you mean `{k}`?)"));
            let message = format!("unknown key `{name}`{hint}; expected one of: {}", keys.join(", "));
            self.diag.report_exact(&path.key(name), key.span(), message);
        }
    }

    /// A key's value when it has the TOML type the key takes; any other type is
    /// reported as `FOUND is not KIND; expected EXPECTED`, with a hint when the
    /// value is only quoted where it should not be.
    pub fn read<T: Expect>(&mut self, path: &FieldPath, field: Option<Item<T>>, expected: &str) -> Read<T> {
        self.read_with(path, field, |found| {
            let key = path.last_key().unwrap_or_default();
            let hint = match (T::KIND, found) {
                (Kind::Integer, Found::String(s)) if s.trim().parse::<i128>().is_ok() => {
                    format!(" (write numbers without quotes: {key} = {})", s.trim())
                }
                (Kind::Boolean, Found::String(s)) if matches!(s.as_str(), "true" | "false") => {
                    format!(" (write it without quotes: {key} = {s})")
                }
                _ => String::new(),
            };
            format!("{found} is not {}; expected {expected}{hint}", kind_name(T::KIND))
        })
    }

    /// Like [`Self::read`], with the message for a value of the wrong type given.
    fn read_with<T>(
        &mut self,
        path: &FieldPath,
        field: Option<Item<T>>,
        message: impl FnOnce(&Found) -> String,
    ) -> Read<T> {
        let Some(item) = field else { return Ok(None) };
        let span = item.span();
        match item.into_inner() {
            Typed::Ok(value) => Ok(Some(Spanned::new(span, value))),
            Typed::Wrong(found) => {
                let message = message(&found);
                self.diag.report_exact(path, span, message);
                Err(Reported)
            }
        }
    }

    /// An element of an array: its value when of the right type, else reported.
    pub fn element<T: Expect>(&mut self, path: &FieldPath, item: Item<T>, expected: &str) -> Option<Spanned<T>> {
        self.read(path, Some(item), expected).ok().flatten()
    }

    /// A table such as `[daemon]`.
    pub fn table<T: Expect>(&mut self, path: &FieldPath, field: Option<Item<T>>) -> Read<T> {
        let header = path.header();
        self.read_with(path, field, |found| match found {
            Found::Tables => format!("{found} is not a table; write [{header}], not [[{header}]]"),
            _ => format!("{found} is not a table; expected a [{header}] table"),
        })
    }

    /// An array of tables such as `[[service]]`.
    pub fn tables<T>(&mut self, path: &FieldPath, field: Option<Item<Vec<Item<T>>>>) -> Read<Vec<Item<T>>> {
        let header = path.header();
        self.read_with(path, field, |found| match found {
            Found::Table => format!("{found} is not an array of tables; write [[{header}]], not [{header}]"),
            _ => format!("{found} is not an array of tables; expected [[{header}]] tables"),
        })
    }

    /// An element of an array of tables.
    pub fn table_element<T: Expect>(&mut self, path: &FieldPath, item: Item<T>) -> Option<Spanned<T>> {
        let header = path.header();
        self.read_with(path, Some(item), |found| format!("{found} is not a table; expected a [[{header}]] table"))
            .ok()
            .flatten()
    }

    /// An integer in `min..=max`, or `default` when absent or wrong.
    pub fn int<T: TryFrom<i128> + Copy>(
        &mut self,
        path: &FieldPath,
        field: Option<Item<i128>>,
        default: T,
        (min, max): (i128, i128),
        expected: &str,
    ) -> T {
        let Ok(Some(value)) = self.read(path, field, expected) else { return default };
        let (span, value) = (value.span(), value.into_inner());
        match T::try_from(value) {
            Ok(v) if (min..=max).contains(&value) => v,
            _ => {
                self.report(path, Some(span), format!("{value} is out of range; expected {expected}"));
                default
            }
        }
    }

    /// A boolean, or `default` when absent or wrong.
    pub fn flag(&mut self, path: &FieldPath, field: Option<Item<bool>>, default: bool, expected: &str) -> bool {
        match self.read(path, field, expected) {
            Ok(Some(value)) => value.into_inner(),
            _ => default,
        }
    }

    /// One of `choices` by name, or `default` when absent or wrong.
    pub fn choice<T: Copy>(
        &mut self,
        path: &FieldPath,
        field: Option<Item<String>>,
        choices: &[(&'static str, T)],
        default: T,
    ) -> T {
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let example = format!("{} = \"{}\"", path.last_key().unwrap_or_default(), names[0]);
        let expected = format!("one of: {} (a quoted string, e.g. {example})", names.join(", "));
        let Ok(Some(text)) = self.read(path, field, &expected) else { return default };
        match checks::choice(text.get_ref(), choices) {
            Ok(value) => value,
            Err(why) => {
                self.report(path, Some(text.span()), why);
                default
            }
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::String => "a string",
        Kind::Integer => "an integer",
        Kind::Boolean => "a boolean",
        Kind::Array => "an array",
        Kind::Table => "a table",
    }
}

/// A value that passed its checks, with the field it came from: for problems
/// that involve two fields (duplicates).
pub struct Located<T> {
    pub value: T,
    pub path: FieldPath,
    pub span: Span,
}

impl<T> Located<T> {
    pub fn new(value: T, path: FieldPath, span: Span) -> Self {
        Located { value, path, span }
    }
}
