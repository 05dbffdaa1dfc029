//! The parallel load's plan: where the snapshot's layout and TOC say each table's data lies,
//! and the pieces of work the workers take, largest first (see `parallel` for how it runs).

use crate::error::Result;
use crate::repo::format::{ChunkRef, DbManifest, DumpLayout, StreamRef};
use crate::repo::reader::BlobReader;
use crate::source::archive::{self, TocEntry};
use futures::StreamExt;
use std::sync::Arc;

/// What the parallel load works from: the TOC-only archive and the pieces of work.
pub(super) struct Plan {
    /// The archive's header and TOC, in an unnamed file.
    pub(super) toc_file: std::fs::File,
    pub(super) int_size: usize,
    /// Largest first.
    pub(super) work: Vec<Work>,
    /// The `SEQUENCE SET` entries' statements.
    pub(super) sequences: Vec<String>,
    /// What each session runs first, as pg_restore sets up its own.
    pub(super) session: String,
    pub(super) tables: usize,
    /// `BLOBS` blocks (large objects).
    pub(super) object_blocks: usize,
    pub(super) toc_bytes: u64,
}

/// One table's data block, or a block of large objects.
#[derive(Debug, Clone)]
pub(super) struct Table {
    pub(super) dump_id: i64,
    /// A `BLOBS` block: large objects, written with `lo_put` (each was created by the schema
    /// step, as pg_restore creates them), rather than a table's rows.
    pub(super) objects: bool,
    /// `schema.name`, for messages.
    pub(super) label: String,
    pub(super) copy: String,
    pub(super) start: u64,
    pub(super) end: u64,
}

/// Tables that lie side by side in the dump, loaded one after the other by one worker, and the
/// chunks that hold them.
#[derive(Debug, Clone)]
pub(super) struct Work {
    pub(super) tables: Vec<Table>,
    pub(super) chunks: Vec<ChunkRef>,
    /// Where the first of `chunks` starts in the dump.
    pub(super) chunks_at: u64,
}

impl Work {
    fn bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.end - t.start).sum()
    }
}

/// The chunk range `[first, last)` that holds the stream's bytes `[start, end)`.
fn chunk_range(starts: &[u64], start: u64, end: u64) -> (usize, usize) {
    let first = starts.partition_point(|&s| s <= start).saturating_sub(1);
    let last = starts.partition_point(|&s| s < end);
    (first, last.max(first))
}

/// Plans the parallel load, or says why it cannot take this snapshot. The outer error is the
/// snapshot's own (a damaged blob in the TOC's chunks); the inner one a reason to take the
/// spool path.
pub(super) async fn plan(
    reader: &Arc<BlobReader>,
    manifest: &DbManifest,
    spool_dir: &std::path::Path,
    jobs: usize,
    ahead: usize,
) -> Result<std::result::Result<Plan, String>> {
    let Some(layout) = &manifest.layout else {
        return Ok(Err(
            "the snapshot was taken before backstop recorded where each table's data lies in the dump".into(),
        ));
    };
    let dump = &manifest.dump;
    let starts = dump.chunk_starts();
    if layout.toc_bytes == 0 || layout.toc_bytes > dump.bytes {
        return Ok(Err(format!(
            "the recorded TOC size {} does not fit the dump",
            layout.toc_bytes
        )));
    }
    let (first, last) = chunk_range(&starts, 0, layout.toc_bytes);
    let mut head = Vec::with_capacity(layout.toc_bytes as usize);
    let mut fetched = reader.stream(dump.chunks[first..last].to_vec(), ahead);
    while let Some(chunk) = fetched.next().await {
        head.extend_from_slice(&chunk?);
    }
    head.truncate(layout.toc_bytes as usize);
    let toc = match archive::read_toc(head.as_slice()) {
        Ok(t) if t.end == layout.toc_bytes => t,
        Ok(t) => {
            return Ok(Err(format!(
                "the TOC ends at byte {}, the layout records {}",
                t.end, layout.toc_bytes
            )))
        }
        Err(e) => return Ok(Err(format!("the archive's TOC cannot be read: {e}"))),
    };
    let (tables, sequences) = match data_entries(&toc.entries, layout, &starts) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    let toc_file = match toc_file(spool_dir, &head) {
        Ok(f) => f,
        Err(e) => {
            return Ok(Err(format!(
                "the TOC-only archive in {} failed: {e}",
                spool_dir.display()
            )))
        }
    };
    let session = session_sql(&toc.entries);
    let count = tables.iter().filter(|t| !t.objects).count();
    let object_blocks = tables.len() - count;
    Ok(Ok(Plan {
        toc_file,
        int_size: toc.int_size,
        work: work(tables, dump, &starts, jobs),
        sequences,
        session,
        tables: count,
        object_blocks,
        toc_bytes: layout.toc_bytes,
    }))
}

/// The TOC-only archive, in an unnamed file in `dir` (see `spool_dump`).
fn toc_file(dir: &std::path::Path, head: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let mut f = tempfile::tempfile_in(dir)?;
    f.write_all(head)?;
    f.rewind()?;
    Ok(f)
}

/// The tables to load, each with its block, and the sequence statements; or why the archive's
/// data section is not one this path restores exactly.
fn data_entries(
    entries: &[TocEntry],
    layout: &DumpLayout,
    starts: &[u64],
) -> std::result::Result<(Vec<Table>, Vec<String>), String> {
    let mut blocks = std::collections::HashMap::new();
    for b in &layout.blocks {
        let span = StreamRef::offset(starts, b.start).zip(StreamRef::offset(starts, b.end));
        match span {
            Some((s, e)) if s < e && ["TABLE DATA", "BLOBS"].contains(&b.desc.as_str()) => {
                blocks.insert(b.dump_id, (s, e));
            }
            _ => {
                return Err(format!(
                    "the layout's block for {}.{} ({}) is not one this path reads",
                    b.schema, b.name, b.desc
                ))
            }
        }
    }
    let (mut tables, mut sequences) = (Vec::new(), Vec::new());
    // As pg_restore reads sections: an entry without one belongs to the section before it.
    let mut section = 2;
    for e in entries {
        if e.section != archive::SECTION_NONE {
            section = e.section;
        }
        if section != archive::SECTION_DATA {
            continue;
        }
        let label = format!("{}.{}", e.namespace, e.tag);
        match e.desc.as_str() {
            "TABLE DATA" | "BLOBS" => {
                let (start, end) = blocks
                    .remove(&e.dump_id)
                    .ok_or_else(|| format!("no data block is recorded for {label}"))?;
                tables.push(Table {
                    dump_id: e.dump_id,
                    objects: e.desc == "BLOBS",
                    label,
                    copy: e.copy.clone(),
                    start,
                    end,
                });
            }
            "SEQUENCE SET" => sequences.push(e.defn.clone()),
            other => return Err(format!("the data section holds a {other} entry ({label})")),
        }
    }
    if let Some(id) = blocks.keys().next() {
        return Err(format!(
            "the layout records a data block for entry {id}, which the TOC lacks"
        ));
    }
    tables.sort_by_key(|t| t.start);
    Ok((tables, sequences))
}

/// Groups tables that lie side by side into pieces of work of at least a share of the data,
/// so that small tables do not each fetch a chunk they share; largest first.
fn work(tables: Vec<Table>, dump: &StreamRef, starts: &[u64], jobs: usize) -> Vec<Work> {
    let total: u64 = tables.iter().map(|t| t.end - t.start).sum();
    let share = (total / (jobs as u64 * 16)).clamp(256 << 10, 16 << 20);
    let mut groups: Vec<Vec<Table>> = Vec::new();
    for t in tables {
        match groups.last_mut() {
            Some(g)
                if g.last().is_some_and(|l| l.end == t.start)
                    && g.iter().map(|t| t.end - t.start).sum::<u64>() < share
                    && t.end - t.start < share =>
            {
                g.push(t)
            }
            _ => groups.push(vec![t]),
        }
    }
    let mut work: Vec<Work> = groups
        .into_iter()
        .map(|tables| {
            let (start, end) = (tables[0].start, tables[tables.len() - 1].end);
            let (first, last) = chunk_range(starts, start, end);
            Work {
                tables,
                chunks: dump.chunks[first..last].to_vec(),
                chunks_at: starts[first],
            }
        })
        .collect();
    work.sort_by_key(|w| std::cmp::Reverse(w.bytes()));
    work
}

/// The statements that set a session up as pg_restore sets up its own, from the archive's
/// ENCODING, STDSTRINGS and SEARCHPATH entries, plus `synchronous_commit = off`.
fn session_sql(entries: &[TocEntry]) -> String {
    let mut sql = String::from(
        "SET statement_timeout = 0; SET lock_timeout = 0; \
         SET idle_in_transaction_session_timeout = 0; SET check_function_bodies = false; \
         SET xmloption = content; SET client_min_messages = warning; SET row_security = off; \
         SET synchronous_commit = off;\n",
    );
    for e in entries {
        if ["ENCODING", "STDSTRINGS", "SEARCHPATH"].contains(&e.desc.as_str()) {
            sql.push_str(&e.defn);
            sql.push('\n');
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_range_holds_exactly_the_bytes_asked_for() {
        let starts = [0, 4, 5, 10];
        assert_eq!(chunk_range(&starts, 0, 4), (0, 1));
        assert_eq!(chunk_range(&starts, 0, 5), (0, 2));
        assert_eq!(chunk_range(&starts, 3, 6), (0, 3));
        assert_eq!(chunk_range(&starts, 4, 5), (1, 2));
        assert_eq!(chunk_range(&starts, 5, 10), (2, 3));
        assert_eq!(chunk_range(&starts, 9, 10), (2, 3));
    }

    #[test]
    fn small_neighbours_are_loaded_together_and_the_largest_work_comes_first() {
        // 64 chunks of 1 MiB; tables of 40 MiB, then ten of 10 KiB, then 20 MiB.
        let mib = 1u64 << 20;
        let dump = StreamRef {
            bytes: 64 * mib,
            sha256: String::new(),
            chunks: (0..64)
                .map(|i| ChunkRef {
                    id: format!("c{i}"),
                    len: mib as u32,
                })
                .collect(),
        };
        let starts = dump.chunk_starts();
        let mut tables = Vec::new();
        let mut at = 1000;
        let mut add = |len: u64| {
            tables.push(Table {
                dump_id: tables.len() as i64,
                objects: false,
                label: format!("t{}", tables.len()),
                copy: String::new(),
                start: at,
                end: at + len,
            });
            at += len;
        };
        add(40 * mib);
        for _ in 0..10 {
            add(10 << 10);
        }
        add(20 * mib);
        let work = work(tables, &dump, &starts, 2);
        let shape: Vec<(usize, u64)> = work.iter().map(|w| (w.tables.len(), w.bytes())).collect();
        assert_eq!(shape, [(1, 40 * mib), (1, 20 * mib), (10, 100 << 10)]);
        for w in &work {
            let first = w.tables[0].start;
            let last = w.tables[w.tables.len() - 1].end;
            assert!(w.chunks_at <= first);
            let covered: u64 = w.chunks.iter().map(|c| u64::from(c.len)).sum();
            assert!(w.chunks_at + covered >= last, "the chunks hold the work");
            assert!(w.chunks_at + covered - last < mib, "and no more");
        }
        assert_eq!(work[2].chunks.len(), 1, "the small tables share one chunk");
    }
}
