//! The pgoutput logical replication messages (protocol version 1), as
//! `pg_logical_slot_peek_binary_changes` returns them: one message per row. Pure decoding, no
//! I/O; see PostgreSQL's "Logical Replication Message Formats".
//!
//! Only what a replay needs is kept: transaction boundaries (with the commit LSN, time and
//! xid), relations (with their key columns and types), and the row changes with their column
//! values in text form. A value pgoutput leaves out because it is an unchanged TOASTed one is
//! [`Value::Unchanged`]: an UPDATE must then leave that column as it is.

pub use super::postgres::quote_ident;
use chrono::{DateTime, Utc};

/// A column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value that was not sent: keep the current one.
    Unchanged,
    /// The type's text output.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.name`, quoted where needed, for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.name` as people read it.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        /// The LSN of the commit record.
        final_lsn: u64,
        commit_time: DateTime<Utc>,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        /// The end of the transaction: where the slot may be confirmed after it.
        end_lsn: u64,
        commit_time: DateTime<Utc>,
    },
    Relation(Relation),
    /// A non-builtin type's name, sent before the first relation that uses it.
    Type {
        oid: u32,
        schema: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        /// The old key (`K`) or whole old row (`O`) when the key changed or the identity is
        /// FULL; `None` when the new row's key identifies it.
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// Origin and logical decoding messages: nothing to replay.
    Other(u8),
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pgoutput: {}", self.0)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| DecodeError(format!("message cut short at byte {}", self.at)))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.i32()? as u32)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError("a string has no terminator".into()))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }
    /// A timestamp: microseconds since 2000-01-01 UTC.
    fn time(&mut self) -> Result<DateTime<Utc>, DecodeError> {
        let micros = self.u64()? as i64;
        Ok(postgres_epoch() + chrono::Duration::microseconds(micros))
    }
    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    let bytes = self.take(len.max(0) as usize)?;
                    Value::Text(String::from_utf8_lossy(bytes).into_owned())
                }
                other => {
                    return Err(DecodeError(format!(
                        "column kind `{}` is not text (binary mode is not used)",
                        other as char
                    )))
                }
            });
        }
        Ok(out)
    }
}

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch.
pub fn postgres_epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).unwrap_or_default()
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, at: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.time()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.time()?,
            }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                columns.push(Column {
                    key: r.u8()? & 1 == 1,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            schema: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            expect(&mut r, b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!(
                    "update without its new row (`{}`)",
                    kind as char
                )));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(DecodeError(format!(
                    "delete without its old key (`{}`)",
                    kind as char
                )));
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.i32()?;
            let options = r.u8()?;
            let mut relations = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                relations,
                cascade: options & 1 == 1,
                restart_identity: options & 2 == 2,
            }
        }
        other => Message::Other(other),
    })
}

fn expect(r: &mut Reader, tag: u8) -> Result<(), DecodeError> {
    let got = r.u8()?;
    if got == tag {
        Ok(())
    } else {
        Err(DecodeError(format!(
            "expected `{}`, found `{}`",
            tag as char, got as char
        )))
    }
}

/// Quotes a value as an SQL string literal (standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(lsn: u64, micros: u64, xid: u32) -> Vec<u8> {
        let mut b = vec![b'B'];
        b.extend(lsn.to_be_bytes());
        b.extend(micros.to_be_bytes());
        b.extend(xid.to_be_bytes());
        b
    }

    #[test]
    fn messages_decode() {
        let m = decode(&begin(0x16_0000_0010, 1_000_000, 742)).unwrap();
        assert_eq!(
            m,
            Message::Begin {
                final_lsn: 0x16_0000_0010,
                commit_time: postgres_epoch() + chrono::Duration::seconds(1),
                xid: 742
            }
        );
        let mut rel = vec![b'R'];
        rel.extend(16385u32.to_be_bytes());
        rel.extend(b"public\0orders\0");
        rel.push(b'd');
        rel.extend(2i16.to_be_bytes());
        rel.push(1);
        rel.extend(b"id\0");
        rel.extend(20u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.push(0);
        rel.extend(b"note\0");
        rel.extend(25u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = decode(&rel).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(r.qualified(), "\"public\".\"orders\"");
        assert!(r.columns[0].key && !r.columns[1].key);
        let mut ins = vec![b'I'];
        ins.extend(16385u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(3i16.to_be_bytes());
        ins.push(b't');
        ins.extend(2i32.to_be_bytes());
        ins.extend(b"42");
        ins.push(b'n');
        ins.push(b'u');
        assert_eq!(
            decode(&ins).unwrap(),
            Message::Insert {
                relation: 16385,
                new: vec![Value::Text("42".into()), Value::Null, Value::Unchanged]
            }
        );
        assert!(decode(&ins[..ins.len() - 3]).is_err());
        let mut t = vec![b'T'];
        t.extend(2i32.to_be_bytes());
        t.push(3);
        t.extend(1u32.to_be_bytes());
        t.extend(2u32.to_be_bytes());
        assert_eq!(
            decode(&t).unwrap(),
            Message::Truncate {
                relations: vec![1, 2],
                cascade: true,
                restart_identity: true
            }
        );
    }

    #[test]
    fn lsns_and_literals() {
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
