//! Reading and writing the ATerm text of `.drv` files, byte for byte as Nix 2.8.
//!
//! The parser accepts exactly the files the printer produces, so that
//! `print(parse(bytes)) == bytes` for every accepted input. Nix's own parser is more
//! lenient (it takes unsorted lists, duplicate keys, needless escapes and trailing
//! bytes, and hangs on an unterminated string); none of those can come out of Nix, and
//! since a `.drv` file's name is the hash of its bytes, accepting two spellings of one
//! derivation would let the same derivation live under two paths. Everything else Nix
//! rejects is rejected here too.
//!
//! Input is bounded by [`Limits`]; the nesting depth is fixed by the grammar, so the
//! parser never recurses on input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

mod print;

pub use print::print;
pub(crate) use print::print_modulo;

use super::{Derivation, DerivationOutput};
use crate::content_address::FileIngestionMethod;
use crate::hash::{Hash, HashAlgo, HashError};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Which part of a `.drv` file a [`ParseError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The `Derive(` header and the punctuation between the top-level fields.
    Structure,
    /// An output's name.
    OutputName,
    /// An output's path.
    OutputPath,
    /// An output's hash algorithm (`[r:]algo`).
    OutputHashAlgo,
    /// An output's hash.
    OutputHash,
    /// An input derivation's path.
    InputDrvPath,
    /// An output name of an input derivation.
    InputDrvOutput,
    /// An input source path.
    InputSrc,
    /// The platform.
    System,
    /// The builder.
    Builder,
    /// A builder argument.
    Arg,
    /// An environment variable's name.
    EnvKey,
    /// An environment variable's value.
    EnvValue,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Structure => "structure",
            Self::OutputName => "output name",
            Self::OutputPath => "output path",
            Self::OutputHashAlgo => "output hash algorithm",
            Self::OutputHash => "output hash",
            Self::InputDrvPath => "input derivation path",
            Self::InputDrvOutput => "input derivation output",
            Self::InputSrc => "input source",
            Self::System => "system",
            Self::Builder => "builder",
            Self::Arg => "argument",
            Self::EnvKey => "environment variable name",
            Self::EnvValue => "environment variable value",
        })
    }
}

/// Upper bounds on what the parser accepts from one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, in bytes.
    pub max_size: usize,
    /// Most outputs.
    pub max_outputs: usize,
    /// Most input derivations, and most output names per input derivation.
    pub max_input_drvs: usize,
    /// Most input sources.
    pub max_input_srcs: usize,
    /// Most builder arguments.
    pub max_args: usize,
    /// Most environment variables.
    pub max_env: usize,
    /// Longest single string, after unescaping.
    pub max_string: usize,
}

impl Default for Limits {
    /// Generous for real derivations (the largest in nixpkgs are a few MiB, with
    /// structured attrs) while bounding what a hostile file can make us allocate.
    fn default() -> Self {
        Self {
            max_size: 64 << 20,
            max_outputs: 1024,
            max_input_drvs: 1 << 16,
            max_input_srcs: 1 << 16,
            max_args: 1 << 16,
            max_env: 1 << 16,
            max_string: 32 << 20,
        }
    }
}

/// Why a `.drv` file could not be parsed. Offsets count bytes from the file's start.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// The file is larger than [`Limits::max_size`].
    #[error("derivation is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The file ends in the middle.
    #[error("derivation ends early, in {field} at byte {offset}")]
    UnexpectedEnd {
        /// What was being read.
        field: Field,
        /// The file's length.
        offset: usize,
    },
    /// A byte other than the grammar requires.
    #[error("expected {expected} in {field} at byte {offset}")]
    Expected {
        /// The text or token expected.
        expected: &'static str,
        /// What was being read.
        field: Field,
        /// Where.
        offset: usize,
    },
    /// Bytes after the closing parenthesis.
    #[error("unexpected bytes after the end of the derivation at byte {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
    },
    /// More list elements than [`Limits`] allow.
    #[error("more than {max} entries in {field} at byte {offset}")]
    TooMany {
        /// Which list.
        field: Field,
        /// The limit.
        max: usize,
        /// Where the first entry over the limit starts.
        offset: usize,
    },
    /// A string longer than [`Limits::max_string`].
    #[error("{field} at byte {offset} is longer than {max} bytes")]
    StringTooLong {
        /// Which string.
        field: Field,
        /// The limit.
        max: usize,
        /// Where the string starts.
        offset: usize,
    },
    /// An escape or a raw byte that Nix never writes in an escaped string.
    #[error("{field} at byte {offset} is not escaped the way Nix writes it")]
    NonCanonicalEscape {
        /// Which string.
        field: Field,
        /// Where the offending byte is.
        offset: usize,
    },
    /// A backslash in a field Nix writes unescaped: Nix would read it back as an
    /// escape, so the field could not have been written by Nix as it reads.
    #[error("backslash in unescaped {field} at byte {offset}")]
    BackslashInRawString {
        /// Which field.
        field: Field,
        /// Where.
        offset: usize,
    },
    /// A name or path that is not UTF-8.
    #[error("{field} at byte {offset} is not valid UTF-8")]
    Utf8 {
        /// Which field.
        field: Field,
        /// Where the string starts.
        offset: usize,
    },
    /// A list that is not sorted, as Nix always writes it.
    #[error("{field} entries are not sorted at byte {offset}")]
    Unsorted {
        /// Which list.
        field: Field,
        /// Where the out-of-order entry starts.
        offset: usize,
    },
    /// The same name, path or key twice.
    #[error("duplicate {field} at byte {offset}")]
    Duplicate {
        /// Which list.
        field: Field,
        /// Where the repeated entry starts.
        offset: usize,
    },
    /// A path that does not start with `/` (Nix's "bad path in derivation").
    #[error("bad path '{path}' in derivation ({field} at byte {offset})")]
    PathNotAbsolute {
        /// Which field.
        field: Field,
        /// The text found.
        path: String,
        /// Where it starts.
        offset: usize,
    },
    /// A path that is not a store path in the given store directory.
    #[error("invalid store path in {field} at byte {offset}")]
    StorePath {
        /// Which field.
        field: Field,
        /// Where it starts.
        offset: usize,
        /// Why.
        #[source]
        source: StorePathError,
    },
    /// An unknown hash algorithm.
    #[error("bad hash algorithm in output '{output}' at byte {offset}")]
    HashAlgo {
        /// The output.
        output: String,
        /// Where it starts.
        offset: usize,
        /// Why.
        #[source]
        source: HashError,
    },
    /// A fixed output's hash that is not lowercase hex of the algorithm's size.
    #[error("output '{output}' has a hash at byte {offset} that is not {algo} in lowercase hex")]
    OutputHash {
        /// The output.
        output: String,
        /// Its algorithm.
        algo: HashAlgo,
        /// Where it starts.
        offset: usize,
    },
    /// An output tuple whose fields form none of the output kinds.
    #[error("output '{output}' at byte {offset}: {reason}")]
    OutputTuple {
        /// The output.
        output: String,
        /// Where the tuple starts.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Parses a `.drv` file. `name` becomes [`Derivation::name`]; it is not checked here,
/// only when a path is computed from it.
pub fn parse(
    dir: &StoreDir,
    bytes: &[u8],
    name: &str,
    limits: &Limits,
) -> Result<Derivation, ParseError> {
    if bytes.len() > limits.max_size {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            max: limits.max_size,
        });
    }
    let mut p = Parser {
        bytes,
        pos: 0,
        dir,
        limits,
    };
    let drv = p.derivation(name)?;
    if p.pos != bytes.len() {
        return Err(ParseError::TrailingBytes { offset: p.pos });
    }
    Ok(drv)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    dir: &'a StoreDir,
    limits: &'a Limits,
}

impl Parser<'_> {
    fn derivation(&mut self, name: &str) -> Result<Derivation, ParseError> {
        self.expect(b"Derive([", Field::Structure)?;
        let outputs = self.outputs()?;
        self.expect(b",[", Field::Structure)?;
        let input_drvs = self.input_drvs()?;
        self.expect(b",[", Field::Structure)?;
        let input_srcs = self.path_set(Field::InputSrc, self.limits.max_input_srcs)?;
        self.expect(b",", Field::Structure)?;
        let system = self.raw_string(Field::System)?.to_vec();
        self.expect(b",", Field::Structure)?;
        let builder = self.escaped_string(Field::Builder)?;
        self.expect(b",[", Field::Structure)?;
        let mut args = Vec::new();
        while self.list_continues(
            args.is_empty(),
            Field::Arg,
            args.len(),
            self.limits.max_args,
        )? {
            args.push(self.escaped_string(Field::Arg)?);
        }
        self.expect(b",[", Field::Structure)?;
        let env = self.env()?;
        self.expect(b")", Field::Structure)?;
        Ok(Derivation {
            name: name.to_owned(),
            outputs,
            input_drvs,
            input_srcs,
            system,
            builder,
            args,
            env,
        })
    }

    fn outputs(&mut self) -> Result<BTreeMap<String, DerivationOutput>, ParseError> {
        let mut outputs = BTreeMap::new();
        let mut last: Option<String> = None;
        while self.list_continues(
            outputs.is_empty(),
            Field::OutputName,
            outputs.len(),
            self.limits.max_outputs,
        )? {
            let start = self.pos;
            self.expect(b"(", Field::OutputName)?;
            let name = self.utf8_raw_string(Field::OutputName)?;
            check_order(last.as_deref(), &name, Field::OutputName, start)?;
            self.expect(b",", Field::OutputName)?;
            let output = self.output(&name, start)?;
            self.expect(b")", Field::OutputName)?;
            last = Some(name.clone());
            outputs.insert(name, output);
        }
        Ok(outputs)
    }

    fn output(&mut self, name: &str, start: usize) -> Result<DerivationOutput, ParseError> {
        let path_at = self.pos;
        let path = self.utf8_raw_string(Field::OutputPath)?;
        self.expect(b",", Field::OutputPath)?;
        let algo_at = self.pos;
        let algo = self.utf8_raw_string(Field::OutputHashAlgo)?;
        self.expect(b",", Field::OutputHashAlgo)?;
        let hash_at = self.pos;
        let hash = self.utf8_raw_string(Field::OutputHash)?;
        let bad = |reason| ParseError::OutputTuple {
            output: name.to_owned(),
            offset: start,
            reason,
        };
        if algo.is_empty() {
            if !hash.is_empty() {
                return Err(bad("a hash without a hash algorithm"));
            }
            if path.is_empty() {
                return Ok(DerivationOutput::Deferred);
            }
            let path = self.store_path(&path, Field::OutputPath, path_at)?;
            return Ok(DerivationOutput::InputAddressed(path));
        }
        let (method, algo_name) = match algo.strip_prefix("r:") {
            Some(rest) => (FileIngestionMethod::Recursive, rest),
            None => (FileIngestionMethod::Flat, algo.as_str()),
        };
        let algo = algo_name
            .parse::<HashAlgo>()
            .map_err(|source| ParseError::HashAlgo {
                output: name.to_owned(),
                offset: algo_at,
                source,
            })?;
        if hash == "impure" {
            if !path.is_empty() {
                return Err(bad("an impure output cannot have a path"));
            }
            return Ok(DerivationOutput::Impure { method, algo });
        }
        if hash.is_empty() {
            if !path.is_empty() {
                return Err(bad(
                    "a floating content-addressed output cannot have a path",
                ));
            }
            return Ok(DerivationOutput::Floating { method, algo });
        }
        if path.is_empty() {
            return Err(bad("a fixed output must have a path"));
        }
        let path = self.store_path(&path, Field::OutputPath, path_at)?;
        let parsed = Hash::parse_bare(&hash, algo)
            .ok()
            .filter(|h| h.to_base16() == hash)
            .ok_or_else(|| ParseError::OutputHash {
                output: name.to_owned(),
                algo,
                offset: hash_at,
            })?;
        Ok(DerivationOutput::Fixed {
            path,
            method,
            hash: parsed,
        })
    }

    fn input_drvs(&mut self) -> Result<BTreeMap<StorePath, BTreeSet<String>>, ParseError> {
        let mut drvs = BTreeMap::new();
        let mut last: Option<String> = None;
        let max = self.limits.max_input_drvs;
        while self.list_continues(drvs.is_empty(), Field::InputDrvPath, drvs.len(), max)? {
            let start = self.pos;
            self.expect(b"(", Field::InputDrvPath)?;
            let at = self.pos;
            let text = self.utf8_raw_string(Field::InputDrvPath)?;
            check_order(last.as_deref(), &text, Field::InputDrvPath, start)?;
            let path = self.store_path(&text, Field::InputDrvPath, at)?;
            self.expect(b",[", Field::InputDrvPath)?;
            let mut names = BTreeSet::new();
            let mut last_name: Option<String> = None;
            while self.list_continues(names.is_empty(), Field::InputDrvOutput, names.len(), max)? {
                let at = self.pos;
                let name = self.utf8_raw_string(Field::InputDrvOutput)?;
                check_order(last_name.as_deref(), &name, Field::InputDrvOutput, at)?;
                last_name = Some(name.clone());
                names.insert(name);
            }
            self.expect(b")", Field::InputDrvPath)?;
            last = Some(text);
            drvs.insert(path, names);
        }
        Ok(drvs)
    }

    fn path_set(&mut self, field: Field, max: usize) -> Result<BTreeSet<StorePath>, ParseError> {
        let mut set = BTreeSet::new();
        let mut last: Option<String> = None;
        while self.list_continues(set.is_empty(), field, set.len(), max)? {
            let at = self.pos;
            let text = self.utf8_raw_string(field)?;
            check_order(last.as_deref(), &text, field, at)?;
            set.insert(self.store_path(&text, field, at)?);
            last = Some(text);
        }
        Ok(set)
    }

    fn env(&mut self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ParseError> {
        let mut env: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let max = self.limits.max_env;
        while self.list_continues(env.is_empty(), Field::EnvKey, env.len(), max)? {
            let start = self.pos;
            self.expect(b"(", Field::EnvKey)?;
            let key = self.escaped_string(Field::EnvKey)?;
            if let Some((last, _)) = env.last_key_value() {
                if *last == key {
                    return Err(ParseError::Duplicate {
                        field: Field::EnvKey,
                        offset: start,
                    });
                }
                if *last > key {
                    return Err(ParseError::Unsorted {
                        field: Field::EnvKey,
                        offset: start,
                    });
                }
            }
            self.expect(b",", Field::EnvValue)?;
            let value = self.escaped_string(Field::EnvValue)?;
            self.expect(b")", Field::EnvValue)?;
            env.insert(key, value);
        }
        Ok(env)
    }

    /// After an opening `[`: whether another element follows (consuming the `,`
    /// before every element but the first) or the list ends (consuming `]`).
    fn list_continues(
        &mut self,
        first: bool,
        field: Field,
        count: usize,
        max: usize,
    ) -> Result<bool, ParseError> {
        match self.peek(field)? {
            b']' => {
                self.pos += 1;
                Ok(false)
            }
            b',' if !first => {
                if count >= max {
                    return Err(ParseError::TooMany {
                        field,
                        max,
                        offset: self.pos + 1,
                    });
                }
                self.pos += 1;
                Ok(true)
            }
            _ if first => Ok(true),
            _ => Err(ParseError::Expected {
                expected: "',' or ']'",
                field,
                offset: self.pos,
            }),
        }
    }

    fn peek(&self, field: Field) -> Result<u8, ParseError> {
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(ParseError::UnexpectedEnd {
                field,
                offset: self.pos,
            })
    }

    fn expect(&mut self, token: &'static [u8], field: Field) -> Result<(), ParseError> {
        for &b in token {
            if self.peek(field)? != b {
                return Err(ParseError::Expected {
                    expected: token_name(token),
                    field,
                    offset: self.pos,
                });
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// A string Nix writes unescaped: everything up to the next `"`.
    fn raw_string(&mut self, field: Field) -> Result<&[u8], ParseError> {
        let start = self.pos;
        self.expect(b"\"", field)?;
        let rest = &self.bytes[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'"')
            .ok_or(ParseError::UnexpectedEnd {
                field,
                offset: self.bytes.len(),
            })?;
        if len > self.limits.max_string {
            return Err(ParseError::StringTooLong {
                field,
                max: self.limits.max_string,
                offset: start,
            });
        }
        let body = &rest[..len];
        if let Some(i) = body.iter().position(|&b| b == b'\\') {
            return Err(ParseError::BackslashInRawString {
                field,
                offset: self.pos + i,
            });
        }
        self.pos += len + 1;
        Ok(body)
    }

    fn utf8_raw_string(&mut self, field: Field) -> Result<String, ParseError> {
        let start = self.pos;
        let body = self.raw_string(field)?;
        std::str::from_utf8(body)
            .map(str::to_owned)
            .map_err(|_| ParseError::Utf8 {
                field,
                offset: start,
            })
    }

    /// A string Nix writes escaped; only the escapes Nix writes are accepted.
    fn escaped_string(&mut self, field: Field) -> Result<Vec<u8>, ParseError> {
        let start = self.pos;
        self.expect(b"\"", field)?;
        let mut out = Vec::new();
        loop {
            let b = self.peek(field)?;
            let at = self.pos;
            self.pos += 1;
            let byte = match b {
                b'"' => return Ok(out),
                b'\\' => {
                    let e = self.peek(field)?;
                    self.pos += 1;
                    match e {
                        b'"' | b'\\' => e,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        _ => {
                            return Err(ParseError::NonCanonicalEscape { field, offset: at });
                        }
                    }
                }
                b'\n' | b'\r' | b'\t' => {
                    return Err(ParseError::NonCanonicalEscape { field, offset: at });
                }
                other => other,
            };
            if out.len() >= self.limits.max_string {
                return Err(ParseError::StringTooLong {
                    field,
                    max: self.limits.max_string,
                    offset: start,
                });
            }
            out.push(byte);
        }
    }

    fn store_path(&self, text: &str, field: Field, offset: usize) -> Result<StorePath, ParseError> {
        if !text.starts_with('/') {
            return Err(ParseError::PathNotAbsolute {
                field,
                path: text.to_owned(),
                offset,
            });
        }
        self.dir
            .parse_path(text)
            .map_err(|source| ParseError::StorePath {
                field,
                offset,
                source,
            })
    }
}

fn check_order(
    last: Option<&str>,
    next: &str,
    field: Field,
    offset: usize,
) -> Result<(), ParseError> {
    match last {
        Some(l) if l == next => Err(ParseError::Duplicate { field, offset }),
        Some(l) if l > next => Err(ParseError::Unsorted { field, offset }),
        _ => Ok(()),
    }
}

fn token_name(token: &'static [u8]) -> &'static str {
    match token {
        b"Derive([" => "'Derive(['",
        b",[" => "',['",
        b"," => "','",
        b"(" => "'('",
        b")" => "')'",
        b"\"" => "'\"'",
        _ => "a token",
    }
}

#[cfg(test)]
mod tests {
    use super::print::escaped;

    #[test]
    fn escaping_is_selective() {
        let mut out = Vec::new();
        escaped(&mut out, b"a\"b\\c\nd\re\tf$\x01\xff");
        assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\re\\tf$\x01\xff\"");
    }
}
