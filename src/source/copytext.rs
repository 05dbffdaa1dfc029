//! Table rows as COPY text: the settings that decide how values are written, and the
//! order-independent digest of the lines.
//!
//! The checksum ([`METHOD_COPY`]) is the wrapping sum of the 128-bit XXH3 of each row's COPY
//! line (without its newline): independent of row order. The backup computes it on pg_dump's
//! data as it streams past (`archive`); verify computes it on the restored database's
//! `COPY ... TO STDOUT` in a session with [`PINNED_SETTINGS`], so the same rows give the same
//! bytes.

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

pub use crate::model::METHOD_COPY;
pub use crate::model::METHOD_ROW;

/// Session settings that decide how values are written as text. pg_dump sets the first three
/// and an empty search_path itself (which makes `regclass` and the like come out
/// schema-qualified); backstop runs pg_dump with `PGTZ=UTC` and pins the same in its own
/// sessions, so a restored database's COPY output can be compared byte for byte. Sessions
/// pinned so must name every relation with its schema.
pub const PINNED_SETTINGS: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; \
    SET extra_float_digits = 3; SET TimeZone = 'UTC'; \
    SELECT pg_catalog.set_config('search_path', '', false)";

/// Row count and order-independent checksum of a table's COPY text, fed in pieces of any size.
///
/// A line `\.` ends the data: pg_dump (up to 17 at least) writes `\.` and two empty lines after
/// the rows, and no row can read `\.` (COPY writes a backslash as `\\`). Empty lines before it
/// are rows: a table without columns has one per row.
#[derive(Default)]
pub struct RowDigest {
    rows: u64,
    sum: u128,
    /// A line split across pieces: its hash so far, and its first bytes.
    partial: Option<(Box<Xxh3>, Vec<u8>)>,
    ended: bool,
}

const END_OF_DATA: &[u8] = b"\\.";

impl RowDigest {
    pub fn update(&mut self, mut data: &[u8]) {
        while !self.ended && !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let line = &data[..i];
                    data = &data[i + 1..];
                    if self.partial.is_some() {
                        self.extend_line(line);
                        self.end_line();
                    } else if line == END_OF_DATA {
                        self.ended = true;
                    } else {
                        self.add(xxh3_128(line));
                    }
                }
                None => {
                    self.extend_line(data);
                    data = &[];
                }
            }
        }
    }

    fn extend_line(&mut self, piece: &[u8]) {
        let (hasher, head) = self
            .partial
            .get_or_insert_with(|| (Box::new(Xxh3::new()), Vec::new()));
        // enough of the line's start to tell `\.` from anything longer
        let room = (END_OF_DATA.len() + 1).saturating_sub(head.len());
        head.extend_from_slice(&piece[..piece.len().min(room)]);
        hasher.update(piece);
    }

    fn end_line(&mut self) {
        if let Some((hasher, head)) = self.partial.take() {
            if head == END_OF_DATA {
                self.ended = true;
            } else {
                self.add(hasher.digest128());
            }
        }
    }

    fn add(&mut self, hash: u128) {
        self.sum = self.sum.wrapping_add(hash);
        self.rows += 1;
    }

    /// `(rows, checksum)`; a last line without a newline counts as a row.
    pub fn finish(mut self) -> (u64, String) {
        self.end_line();
        (self.rows, format!("{:032x}", self.sum))
    }
}

/// The digest of these lines, each followed by a newline (tests).
#[cfg(test)]
pub fn digest_lines(lines: &[&str]) -> (u64, String) {
    let mut d = RowDigest::default();
    for l in lines {
        d.update(l.as_bytes());
        d.update(b"\n");
    }
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use digest_lines as digest;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_digest_ignores_row_order_and_piece_boundaries(
            rows in proptest::collection::vec("[a-z\\t\\\\ ]{0,40}", 0..30),
            cuts in proptest::collection::vec(0usize..2000, 0..10),
            seed in any::<u64>(),
        ) {
            let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
            let mut pieces = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= text.len()).collect();
            cuts.sort();
            let mut at = 0;
            for c in cuts {
                pieces.push(&text.as_bytes()[at..c]);
                at = c;
            }
            pieces.push(&text.as_bytes()[at..]);
            let mut d = RowDigest::default();
            for p in pieces {
                d.update(p);
            }
            let mut shuffled: Vec<&str> = rows.iter().map(String::as_str).collect();
            let n = shuffled.len();
            if n > 1 {
                shuffled.rotate_left((seed as usize) % n);
            }
            prop_assert_eq!(d.finish(), digest(&shuffled));
        }
    }

    #[test]
    fn the_end_of_data_line_ends_the_rows_however_it_is_split() {
        let whole = b"a\n\n\\.x\n\\.\n\n\n";
        for cut in 0..whole.len() {
            let mut d = RowDigest::default();
            d.update(&whole[..cut]);
            d.update(&whole[cut..]);
            assert_eq!(d.finish(), digest(&["a", "", "\\.x"]), "cut at {cut}");
        }
    }

    #[test]
    fn the_digest_tells_rows_apart() {
        assert_ne!(digest(&["1\tx", "2\ty"]).1, digest(&["1\tx", "2\tz"]).1);
        assert_ne!(digest(&["a", "a"]).1, digest(&["a"]).1);
    }
}
