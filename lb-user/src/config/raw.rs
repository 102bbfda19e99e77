//! The raw layer: serde structs that mirror the file key for key.
//!
//! Every key is an `Option<Item<T>>`: absent, or a [`Spanned`] value that is
//! either of the TOML type the key takes or a note of what the file holds
//! instead ([`Typed::Wrong`]). Keys a table does not know are kept, with their
//! place, in its `unknown` list. So reading never stops at a value of the
//! wrong type or at an unknown key, and validation reports all of them with
//! their lines; only a TOML syntax error (or a number too large for any
//! integer type) stops here.
//!
//! Values stay loose (strings, `i128`): enums, addresses and ranges are read
//! by validation, which knows the field and what it expects.

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::de::{
    self,
    value::{MapAccessDeserializer, SeqAccessDeserializer},
    Deserialize, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
pub use toml::Spanned;

/// A value in the file with its place: the type every key of a raw table holds.
pub type Item<T> = Spanned<Typed<T>>;

/// The TOML type a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Boolean,
    Array,
    Table,
}

/// What the file holds where a value of another TOML type was expected.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    String(String),
    Integer(i128),
    Float(f64),
    Boolean(bool),
    Datetime,
    Array,
    /// An array whose elements are all tables (`[[name]]`).
    Tables,
    Table,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::String(s) => write!(f, "the string {s:?}"),
            Found::Integer(n) => write!(f, "the integer {n}"),
            // Debug keeps the decimal point: 65537.0, not 65537.
            Found::Float(x) => write!(f, "the float {x:?}"),
            Found::Boolean(b) => write!(f, "the boolean {b}"),
            Found::Datetime => f.write_str("a date-time"),
            Found::Array => f.write_str("an array"),
            Found::Tables => f.write_str("an array of tables"),
            Found::Table => f.write_str("a table"),
        }
    }
}

/// A value of the expected TOML type, or what the file has instead.
#[derive(Debug)]
pub enum Typed<T> {
    Ok(T),
    Wrong(Found),
}

impl<T> Typed<T> {
    /// The value, when it has the expected type.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Typed::Ok(value) => Some(value),
            Typed::Wrong(_) => None,
        }
    }
}

/// A raw type's TOML type.
pub trait Expect {
    const KIND: Kind;
}

impl Expect for String {
    const KIND: Kind = Kind::String;
}

impl Expect for i128 {
    const KIND: Kind = Kind::Integer;
}

impl Expect for bool {
    const KIND: Kind = Kind::Boolean;
}

impl<T> Expect for Vec<T> {
    const KIND: Kind = Kind::Array;
}

impl<'de, T: Deserialize<'de> + Expect> Deserialize<'de> for Typed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TypedVisitor(PhantomData))
    }
}

struct TypedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Expect> TypedVisitor<T> {
    /// Reads a scalar of kind `kind` as `T` when `T` takes that kind.
    fn scalar<D: Deserializer<'de>>(kind: Kind, value: D, found: Found) -> Result<Typed<T>, D::Error> {
        if kind == T::KIND {
            T::deserialize(value).map(Typed::Ok)
        } else {
            Ok(Typed::Wrong(found))
        }
    }
}

impl<'de, T: Deserialize<'de> + Expect> Visitor<'de> for TypedVisitor<T> {
    type Value = Typed<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a TOML {:?}", T::KIND)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Typed<T>, E> {
        Self::scalar(Kind::Boolean, v.into_deserializer(), Found::Boolean(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Typed<T>, E> {
        self.visit_i128(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Typed<T>, E> {
        self.visit_i128(v.into())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Typed<T>, E> {
        Self::scalar(Kind::Integer, v.into_deserializer(), Found::Integer(v))
    }

    // u128 beyond i128 falls to serde's default: an error with toml's message.

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Typed<T>, E> {
        Ok(Typed::Wrong(Found::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Typed<T>, E> {
        Self::scalar(Kind::String, v.into_deserializer(), Found::String(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Typed<T>, A::Error> {
        if T::KIND == Kind::Array {
            return T::deserialize(SeqAccessDeserializer::new(seq)).map(Typed::Ok);
        }
        let mut all_tables = true;
        let mut empty = true;
        while let Some(item) = seq.next_element::<toml::Value>()? {
            all_tables &= item.is_table();
            empty = false;
        }
        Ok(Typed::Wrong(if all_tables && !empty { Found::Tables } else { Found::Array }))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Typed<T>, A::Error> {
        if T::KIND == Kind::Table {
            // toml hands a date-time over as a map whose one key is not a key
            // of the document: it has no place, so reading it as a spanned key
            // fails. A key of a real table never does.
            let first_key_failed = Cell::new(false);
            let map = FirstKey { map, first: true, failed: &first_key_failed };
            return match T::deserialize(MapAccessDeserializer::new(map)) {
                Ok(table) => Ok(Typed::Ok(table)),
                Err(_) if first_key_failed.get() => Ok(Typed::Wrong(Found::Datetime)),
                Err(e) => Err(e),
            };
        }
        // toml hands a date-time over as a map; `toml::Value` knows it.
        let value = toml::Value::deserialize(MapAccessDeserializer::new(map))?;
        Ok(Typed::Wrong(if value.is_datetime() { Found::Datetime } else { Found::Table }))
    }
}

/// A map that notes whether its first key could not be read.
struct FirstKey<'f, A> {
    map: A,
    first: bool,
    failed: &'f Cell<bool>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FirstKey<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let key = self.map.next_key_seed(seed);
        if std::mem::take(&mut self.first) && key.is_err() {
            self.failed.set(true);
        }
        key
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A raw table: one `Option<Item<T>>` per key it takes, and the keys it does
/// not take in `unknown`.
macro_rules! raw_table {
    ($(#[$meta:meta])* $name:ident { $($key:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $(pub $key: Option<Item<$ty>>,)*
            /// Keys this table does not take, where they are.
            pub unknown: Vec<Spanned<String>>,
        }

        impl $name {
            /// The keys this table takes, in the order the documentation gives them.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];
        }

        impl Expect for $name {
            const KIND: Kind = Kind::Table;
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct TableVisitor;
                impl<'de> Visitor<'de> for TableVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a table")
                    }

                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        let mut table = $name::default();
                        while let Some(key) = map.next_key::<Spanned<String>>()? {
                            match key.get_ref().as_str() {
                                $(stringify!($key) => table.$key = Some(map.next_value()?),)*
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                    table.unknown.push(key);
                                }
                            }
                        }
                        Ok(table)
                    }
                }
                deserializer.deserialize_map(TableVisitor)
            }
        }
    };
}

raw_table! {
    /// The whole file.
    RawConfig {
        daemon: RawDaemon,
        service: Vec<Item<RawService>>,
    }
}

raw_table! {
    /// `[daemon]`
    RawDaemon {
        interfaces: Vec<Item<String>>,
        xdp_mode: String,
        admin_socket: String,
        metrics: String,
        conntrack_entries: i128,
        conntrack_guard_rate: i128,
        pin_path: String,
        conntrack_timeout_syn: String,
        conntrack_timeout_established: String,
        conntrack_timeout_closing: String,
        conntrack_timeout_udp: String,
        deny: Vec<Item<String>>,
        closed_ports: String,
        gue_port: i128,
        encap_source_v4: String,
        encap_source_v6: String,
        announce: RawAnnounce,
    }
}

raw_table! {
    /// `[daemon.announce]`
    RawAnnounce {
        socket: String,
        protocol: String,
    }
}

raw_table! {
    /// `[[service]]`
    RawService {
        name: String,
        vip: String,
        protocol: String,
        forwarding: String,
        scheduler: String,
        table_size: i128,
        preempt: bool,
        answer_ping: bool,
        allow: Vec<Item<String>>,
        deny: Vec<Item<String>>,
        new_flows_per_source: RawRate,
        health: RawHealth,
        backend: Vec<Item<RawBackend>>,
    }
}

raw_table! {
    /// `new_flows_per_source = { rate, burst }`
    RawRate {
        rate: i128,
        burst: i128,
    }
}

raw_table! {
    /// `[service.health]`
    RawHealth {
        check: String,
        path: String,
        host: String,
        ca_file: String,
        expect_status: i128,
        interval_ms: i128,
        timeout_ms: i128,
        rise: i128,
        fall: i128,
    }
}

raw_table! {
    /// `[[service.backend]]`
    RawBackend {
        address: String,
        weight: i128,
        role: String,
    }
}

/// Parses the text into the raw structs; fails only on what TOML cannot read.
pub fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
    toml::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawConfig {
        parse(text).unwrap_or_else(|e| panic!("expected {text:?} to parse: {e}"))
    }

    #[test]
    fn values_of_the_wrong_type_are_kept_with_their_place() {
        let text = "[daemon]\ninterfaces = \"eth0\"\nconntrack_entries = \"1M\"\nxdp_mode = 1.5\n";
        let daemon = raw(text).daemon.expect("[daemon] is there");
        let daemon = daemon.get_ref().ok().expect("[daemon] is a table");
        let interfaces = daemon.interfaces.as_ref().expect("interfaces is there");
        assert!(matches!(interfaces.get_ref(), Typed::Wrong(Found::String(s)) if s == "eth0"), "{interfaces:?}");
        assert_eq!(&text[interfaces.span()], "\"eth0\"");
        let entries = daemon.conntrack_entries.as_ref().expect("conntrack_entries is there");
        assert!(matches!(entries.get_ref(), Typed::Wrong(Found::String(s)) if s == "1M"), "{entries:?}");
        let mode = daemon.xdp_mode.as_ref().expect("xdp_mode is there");
        assert!(matches!(mode.get_ref(), Typed::Wrong(Found::Float(x)) if *x == 1.5), "{mode:?}");
    }

    #[test]
    fn unknown_keys_are_collected_with_their_place() {
        let text = "verbose = true\n[daemon]\nmode = 1\n[daemon.extra]\nx = 1\n";
        let config = raw(text);
        let keys = |unknown: &[Spanned<String>]| -> Vec<String> {
            unknown.iter().map(|k| format!("{}@{}", k.get_ref(), &text[k.span()])).collect()
        };
        assert_eq!(keys(&config.unknown), ["verbose@verbose"]);
        let daemon = config.daemon.expect("[daemon] is there");
        let mut unknown = keys(&daemon.get_ref().ok().expect("a table").unknown);
        unknown.sort();
        assert_eq!(unknown, ["extra@extra", "mode@mode"]);
    }

    #[test]
    fn tables_arrays_and_date_times_are_told_apart() {
        let config = raw("daemon = 1979-05-27\n[service]\nname = 1\n");
        assert!(matches!(config.daemon.expect("daemon").get_ref(), Typed::Wrong(Found::Datetime)));
        assert!(matches!(config.service.expect("service").get_ref(), Typed::Wrong(Found::Table)));
        let config = raw("[[daemon]]\ninterfaces = []\n");
        assert!(matches!(config.daemon.expect("daemon").get_ref(), Typed::Wrong(Found::Tables)));
        let config = raw("daemon = [1, 2]\n");
        assert!(matches!(config.daemon.expect("daemon").get_ref(), Typed::Wrong(Found::Array)));
        let config = raw("[[service]]\nhealth = 07:32:00\nbackend = [1979-05-27T07:32:00Z]\n");
        let service = config.service.expect("service");
        let service = service.get_ref().ok().expect("an array")[0].get_ref().ok().expect("a table");
        assert!(matches!(service.health.as_ref().expect("health").get_ref(), Typed::Wrong(Found::Datetime)));
        let backends = service.backend.as_ref().expect("backend");
        assert!(matches!(backends.get_ref().ok().expect("an array")[0].get_ref(), Typed::Wrong(Found::Datetime)));
    }

    #[test]
    fn large_integers_are_read_whole() {
        let text = "[daemon]\nconntrack_entries = 99999999999999999999\n";
        let daemon = raw(text).daemon.expect("daemon");
        let entries = daemon.get_ref().ok().expect("a table").conntrack_entries.as_ref().expect("there");
        assert!(matches!(entries.get_ref(), Typed::Ok(99_999_999_999_999_999_999)), "{entries:?}");
    }

    #[test]
    fn syntax_errors_stop_parsing() {
        let e = parse("[daemon]\ninterfaces = [\"eth0\"\n").expect_err("an unclosed array is a syntax error");
        assert!(e.span().is_some(), "a syntax error has a place: {e}");
    }
}
