//! Per-table figures read from pg_dump's own output, as it streams past.
//!
//! backstop's dump is pg_dump's custom format, uncompressed (`-Fc -Z0`): a header, the table
//! of contents (TOC), then one data block per `TABLE DATA` entry holding the rows exactly as
//! `COPY ... TO STDOUT` wrote them, one text line per row. [`scan_alongside`] hands the bytes
//! that go to the sealer to a second thread as well, which parses the archive and counts and
//! hashes every table's lines. The figures therefore describe the very bytes that were sealed,
//! at the cost of a hash per row instead of a second scan of every table on the server.
//!
//! The checksum is `copytext`'s: recomputable on a restored database by running the TOC entry's
//! own COPY statement in a session pinned the way pg_dump pins its own.
//!
//! The figures count what pg_dump wrote, in the exported snapshot. Which tables there must be
//! comes from the catalog, not from the archive: a table the archive lacks is counted by SQL
//! in the snapshot instead, so a restore without it fails verification rather than passing
//! unnoticed.
//!
//! The parser reads archive versions 1.14 to 1.16 (pg_dump 12 to 17). Anything it cannot read
//! (another version, a compressed archive) is an error the caller answers by falling back to
//! SQL scans, never a wrong figure: the scan only reports tables whose data block it read whole.

use super::copytext::RowDigest;
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// One table's data as the archive holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableData {
    pub schema: String,
    pub name: String,
    /// The statement that writes the same lines: the TOC's `COPY t (cols) FROM stdin;` turned
    /// into `COPY t (cols) TO STDOUT`.
    pub copy_out: String,
    pub rows: u64,
    pub checksum: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The archive's client encoding (its `ENCODING` entry).
    pub encoding: Option<String>,
    pub tables: Vec<TableData>,
    /// Where the header and TOC end: the first data block starts here.
    pub toc_end: u64,
    /// Every data block, in stream order.
    pub blocks: Vec<BlockSpan>,
}

/// Where one data block lies in the archive: from its block-type byte to the end of its
/// closing zero length, `end` exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpan {
    pub dump_id: i64,
    /// The TOC entry's kind: `TABLE DATA`, or `BLOBS` (large objects).
    pub desc: String,
    pub schema: String,
    pub name: String,
    pub start: u64,
    pub end: u64,
}

/// Wraps `inner` so that every byte read through it is also parsed on another thread. The
/// handle yields the scan once the wrapper has been read to its end (or dropped, which makes
/// the scan fail as truncated). A scan that fails early stops receiving; reading goes on.
pub fn scan_alongside<R: Read>(inner: R) -> (Tee<R>, JoinHandle<Result<Scan, String>>) {
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let handle = std::thread::spawn(move || scan(ChannelReader::new(move || rx.recv().ok())));
    let tee = Tee {
        inner,
        tx: Some(tx),
        pending: Vec::with_capacity(TEE_BATCH),
    };
    (tee, handle)
}

/// Bytes handed to the scanner at a time: a pipe yields 64 KiB per read, and waking the
/// scanner for each would cost more than its work.
const TEE_BATCH: usize = 512 * 1024;

pub struct Tee<R> {
    inner: R,
    tx: Option<SyncSender<Vec<u8>>>,
    pending: Vec<u8>,
}

impl<R> Tee<R> {
    fn send(&mut self) {
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(TEE_BATCH));
        if let Some(tx) = &self.tx {
            if tx.send(batch).is_err() {
                self.tx = None; // the scanner gave up; its error is in its result
            }
        }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.tx.is_some() {
            self.pending.extend_from_slice(&buf[..n]);
            if n == 0 || self.pending.len() >= TEE_BATCH {
                self.send();
            }
        }
        if n == 0 {
            self.tx = None; // end of stream for the scanner
        }
        Ok(n)
    }
}

/// A reader over batches of bytes that `next` yields (from a channel), until it yields none.
pub struct ChannelReader<F> {
    next: F,
    buf: Vec<u8>,
    pos: usize,
}

impl<F: FnMut() -> Option<Vec<u8>>> ChannelReader<F> {
    pub fn new(next: F) -> Self {
        ChannelReader {
            next,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Whether a batch is at hand; waits for the next one when the current is used up.
    fn fill(&mut self) -> bool {
        while self.pos == self.buf.len() {
            match (self.next)() {
                Some(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                None => return false,
            }
        }
        true
    }
}

impl<F: FnMut() -> Option<Vec<u8>>> Read for ChannelReader<F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.fill() {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    /// The parser reads a few bytes at a time, millions of times: most are in the batch at hand.
    fn read_exact(&mut self, mut out: &mut [u8]) -> io::Result<()> {
        if let Some(here) = self.buf.get(self.pos..self.pos + out.len()) {
            out.copy_from_slice(here);
            self.pos += out.len();
            return Ok(());
        }
        while !out.is_empty() {
            match self.read(out)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => out = &mut out[n..],
            }
        }
        Ok(())
    }
}

/// A reader that can pass over bytes without copying them out.
pub trait Skip: Read {
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

impl<F: FnMut() -> Option<Vec<u8>>> Skip for ChannelReader<F> {
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if !self.fill() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let step = n.min((self.buf.len() - self.pos) as u64);
            self.pos += step as usize;
            n -= step;
        }
        Ok(())
    }
}

impl Skip for &[u8] {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > self.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        *self = &self[n..];
        Ok(())
    }
}

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
const FORMAT_CUSTOM: u8 = 1;

const fn version(major: u32, minor: u32) -> u32 {
    (major * 256 + minor) * 256
}

/// One TOC entry, as far as backstop needs it.
#[derive(Debug, Clone)]
pub struct TocEntry {
    pub dump_id: i64,
    pub tag: String,
    pub desc: String,
    /// pg_dump's section: 1 none (ACL, COMMENT: the section of the entry before), 2 pre-data,
    /// 3 data, 4 post-data.
    pub section: i64,
    pub defn: String,
    pub copy: String,
    pub namespace: String,
    /// Where the entry's data-offset flag byte is, counted from the archive's start.
    offset_at: u64,
    offset_flag: u8,
}

pub const SECTION_NONE: i64 = 1;
pub const SECTION_DATA: i64 = 3;

/// An archive's header and table of contents.
#[derive(Debug, Clone)]
pub struct Toc {
    /// The size of the archive's integers, after their sign byte.
    pub int_size: usize,
    pub entries: Vec<TocEntry>,
    /// Where the TOC ends, counted from the archive's start.
    pub end: u64,
}

/// Reads an archive's header and table of contents from `r`.
pub fn read_toc<R: Read>(r: R) -> Result<Toc, String> {
    let mut a = Archive::new(r);
    let off_size = read_header(&mut a)?;
    let count = a.int()?;
    let entries = (0..count)
        .map(|_| read_toc_entry(&mut a, off_size))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Toc {
        int_size: a.int_size,
        entries,
        end: a.pos,
    })
}

/// Reads the header up to the TOC; returns the archive's offset size.
fn read_header<R: Read>(a: &mut Archive<R>) -> Result<usize, String> {
    let mut magic = [0u8; 5];
    a.exact(&mut magic)?;
    if &magic != b"PGDMP" {
        return Err("not a pg_dump custom-format archive".into());
    }
    let (major, minor) = (a.byte()? as u32, a.byte()? as u32);
    let rev = a.byte()? as u32;
    a.version = version(major, minor) + rev;
    if a.version < version(1, 14) || a.version >= version(1, 17) {
        return Err(format!(
            "archive version {major}.{minor}.{rev} is not one backstop reads (1.14 to 1.16)"
        ));
    }
    a.int_size = a.byte()? as usize;
    let off_size = a.byte()? as usize;
    if !(1..=8).contains(&a.int_size) || !(1..=16).contains(&off_size) {
        return Err(format!(
            "implausible integer sizes {} and {off_size}",
            a.int_size
        ));
    }
    if a.byte()? != FORMAT_CUSTOM {
        return Err("not the custom format".into());
    }
    let compressed = if a.version >= version(1, 15) {
        a.byte()? as i64 // algorithm; 0 = none
    } else {
        a.int()? // level
    };
    if compressed != 0 {
        return Err("the archive is compressed".into());
    }
    for _ in 0..7 {
        a.int()?; // creation time: sec, min, hour, mday, mon, year, isdst
    }
    a.string()?; // database name
    a.string()?; // server version
    a.string()?; // pg_dump version
    Ok(off_size)
}

fn read_toc_entry<R: Read>(a: &mut Archive<R>, off_size: usize) -> Result<TocEntry, String> {
    let dump_id = a.int()?;
    a.int()?; // had dumper
    a.string()?; // catalog table oid
    a.string()?; // oid
    let tag = a.string()?.unwrap_or_default();
    let desc = a.string()?.unwrap_or_default();
    let section = a.int()?;
    let defn = a.string()?.unwrap_or_default();
    a.string()?; // drop statement
    let copy = a.string()?.unwrap_or_default();
    let namespace = a.string()?.unwrap_or_default();
    a.string()?; // tablespace
    a.string()?; // table access method
    if a.version >= version(1, 16) {
        a.int()?; // relkind
    }
    a.string()?; // owner
    a.string()?; // "with oids", always false
    while a.string()?.is_some() {} // dependencies, ended by a null string
    let offset_at = a.pos;
    let offset_flag = a.byte()?; // data offset flag, then the offset
    for _ in 0..off_size {
        a.byte()?;
    }
    Ok(TocEntry {
        dump_id,
        tag,
        desc,
        section,
        defn,
        copy,
        namespace,
        offset_at,
        offset_flag,
    })
}

/// Parses a whole custom-format archive from `r`.
pub fn scan<R: Read>(r: R) -> Result<Scan, String> {
    let mut a = Archive::new(r);
    let off_size = read_header(&mut a)?;
    let mut scan = Scan::default();
    let mut data_entries: HashMap<i64, (String, String, String)> = HashMap::new();
    let mut names: HashMap<i64, (String, String, String)> = HashMap::new();
    let count = a.int()?;
    for _ in 0..count {
        let e = read_toc_entry(&mut a, off_size)?;
        names.insert(
            e.dump_id,
            (e.desc.clone(), e.namespace.clone(), e.tag.clone()),
        );
        match e.desc.as_str() {
            "ENCODING" => scan.encoding = e.defn.split('\'').nth(1).map(str::to_string),
            "TABLE DATA" => {
                let stmt = e
                    .copy
                    .trim_end()
                    .strip_suffix("FROM stdin;")
                    .ok_or_else(|| {
                        format!("unexpected COPY statement for {}.{}", e.namespace, e.tag)
                    })?;
                data_entries.insert(
                    e.dump_id,
                    (e.namespace, e.tag, format!("{}TO STDOUT", stmt)),
                );
            }
            _ => {}
        }
    }

    scan.toc_end = a.pos;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = a.pos;
        let kind = match a.byte_or_end()? {
            None => return Ok(scan),
            Some(k) => k,
        };
        let dump_id = a.int()?;
        match kind {
            BLK_DATA => {
                let entry = data_entries.remove(&dump_id);
                let mut digest = RowDigest::default();
                a.chunks(&mut buf, |piece| {
                    if entry.is_some() {
                        digest.update(piece)
                    }
                })?;
                if let Some((schema, name, copy_out)) = entry {
                    let (rows, checksum) = digest.finish();
                    scan.tables.push(TableData {
                        schema,
                        name,
                        copy_out,
                        rows,
                        checksum,
                    });
                }
            }
            BLK_BLOBS => {
                while a.int()? != 0 {
                    a.chunks(&mut buf, |_| {})?; // one large object
                }
            }
            other => return Err(format!("unknown data block type {other}")),
        }
        let (desc, schema, name) = names.remove(&dump_id).unwrap_or_default();
        scan.blocks.push(BlockSpan {
            dump_id,
            desc,
            schema,
            name,
            start,
            end: a.pos,
        });
    }
}

/// Takes one data block's bytes, fed in pieces from its block-type byte to its end, and gives
/// back its payload without the archive's framing. A `TABLE DATA` block is its header, then a
/// length before each piece of COPY text, and a zero length at the end. A `BLOBS` block (large
/// objects) is its header, then for each object its OID and its pieces framed the same way,
/// and a zero OID at the end.
#[derive(Debug)]
pub struct Deframer {
    int_size: usize,
    dump_id: i64,
    kind: u8,
    state: Frame,
    /// The bytes of a header, OID or length read so far.
    partial: Vec<u8>,
    /// The large object being read, and how much of it so far.
    object: u32,
    object_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Header,
    Object,
    Length,
    Data(u64),
    Done,
}

/// A piece of a large object: write `data` at `at` in object `oid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPiece {
    pub oid: u32,
    pub at: u64,
    pub data: Vec<u8>,
}

impl Deframer {
    /// For the `TABLE DATA` block of TOC entry `dump_id`.
    pub fn new(int_size: usize, dump_id: i64) -> Deframer {
        Self::of_kind(int_size, dump_id, BLK_DATA)
    }

    /// For the `BLOBS` block of TOC entry `dump_id`.
    pub fn large_objects(int_size: usize, dump_id: i64) -> Deframer {
        Self::of_kind(int_size, dump_id, BLK_BLOBS)
    }

    fn of_kind(int_size: usize, dump_id: i64, kind: u8) -> Deframer {
        Deframer {
            int_size,
            dump_id,
            kind,
            state: Frame::Header,
            partial: Vec::with_capacity(2 + int_size),
            object: 0,
            object_at: 0,
        }
    }

    /// Whether the block's closing zero length (or OID) has been read.
    pub fn is_done(&self) -> bool {
        self.state == Frame::Done
    }

    /// An int in the archive's form: a sign byte, then `int_size` bytes, least significant
    /// first.
    fn int(bytes: &[u8]) -> i64 {
        let value = bytes[1..]
            .iter()
            .enumerate()
            .fold(0i64, |v, (i, &x)| v | (x as i64) << (8 * i));
        if bytes[0] != 0 {
            -value
        } else {
            value
        }
    }

    /// Collects up to `need` framing bytes from `input`; true once they are all there.
    fn gather(&mut self, input: &mut &[u8], need: usize) -> bool {
        let take = (need - self.partial.len()).min(input.len());
        self.partial.extend_from_slice(&input[..take]);
        *input = &input[take..];
        self.partial.len() == need
    }

    /// Reads a `TABLE DATA` block's `input`, appending its payload to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.run(input, |_, _, data| out.extend_from_slice(data))
    }

    /// Reads a `BLOBS` block's `input`, returning the pieces of large objects it holds.
    pub fn feed_objects(&mut self, input: &[u8]) -> Result<Vec<ObjectPiece>, String> {
        let mut pieces: Vec<ObjectPiece> = Vec::new();
        self.run(input, |oid, at, data| match pieces.last_mut() {
            Some(p) if p.oid == oid && p.at + p.data.len() as u64 == at => {
                p.data.extend_from_slice(data)
            }
            _ => pieces.push(ObjectPiece {
                oid,
                at,
                data: data.to_vec(),
            }),
        })?;
        Ok(pieces)
    }

    /// The state machine: `each(object, offset in it, data)` for every run of payload.
    fn run(
        &mut self,
        mut input: &[u8],
        mut each: impl FnMut(u32, u64, &[u8]),
    ) -> Result<(), String> {
        let after_header = if self.kind == BLK_BLOBS {
            Frame::Object
        } else {
            Frame::Length
        };
        while !input.is_empty() {
            match self.state {
                Frame::Header => {
                    if self.gather(&mut input, 2 + self.int_size) {
                        let id = Self::int(&self.partial[1..]);
                        if self.partial[0] != self.kind || id != self.dump_id {
                            return Err(format!(
                                "expected the data block of entry {}, found a block of type {} for entry {id}",
                                self.dump_id, self.partial[0]
                            ));
                        }
                        self.partial.clear();
                        self.state = after_header;
                    }
                }
                Frame::Object => {
                    if self.gather(&mut input, 1 + self.int_size) {
                        let oid = Self::int(&self.partial);
                        self.partial.clear();
                        self.state = match u32::try_from(oid) {
                            Ok(0) => Frame::Done,
                            Ok(oid) => {
                                (self.object, self.object_at) = (oid, 0);
                                Frame::Length
                            }
                            Err(_) => return Err(format!("large object OID {oid} out of range")),
                        };
                    }
                }
                Frame::Length => {
                    if self.gather(&mut input, 1 + self.int_size) {
                        let len = Self::int(&self.partial);
                        self.partial.clear();
                        self.state = match u64::try_from(len) {
                            Ok(0) if self.kind == BLK_BLOBS => Frame::Object,
                            Ok(0) => Frame::Done,
                            Ok(n) => Frame::Data(n),
                            Err(_) => return Err(format!("negative chunk length {len}")),
                        };
                    }
                }
                Frame::Data(left) => {
                    let n = left.min(input.len() as u64) as usize;
                    each(self.object, self.object_at, &input[..n]);
                    self.object_at += n as u64;
                    input = &input[n..];
                    self.state = match left - n as u64 {
                        0 => Frame::Length,
                        rest => Frame::Data(rest),
                    };
                }
                Frame::Done => {
                    return Err(format!(
                        "{} bytes past the end of the data block of entry {}",
                        input.len(),
                        self.dump_id
                    ))
                }
            }
        }
        Ok(())
    }
}

const OFFSET_POS_NOT_SET: u8 = 1;
const OFFSET_POS_SET: u8 = 2;

/// The data offsets missing from the TOC of a custom-format archive that pg_dump wrote to a
/// pipe, found by [`data_offsets`] as the archive streams past and written into the archive's
/// file by [`DataOffsets::write_to`], as pg_dump itself does when it writes to a file: for
/// every entry whose offset is "not set" and whose data block the archive holds, the flag
/// becomes "set" and the offset the block's position (least significant byte first). With
/// them, each of pg_restore's parallel workers seeks straight to its table's data instead of
/// reading the archive from the start to find it. Only those flag and offset bytes change.
#[derive(Debug, Default)]
pub struct DataOffsets {
    /// Where an entry's flag byte is, and the flag and offset bytes to put there.
    patches: Vec<(u64, Vec<u8>)>,
}

impl DataOffsets {
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// Writes the offsets into `file`, which holds the very archive they were found in; the
    /// caller has already checked its every byte.
    pub fn write_to(&self, file: &std::fs::File) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        for (flag_at, bytes) in &self.patches {
            file.write_all_at(bytes, *flag_at)
                .map_err(|e| format!("writing the archive's data offsets: {e}"))?;
        }
        Ok(())
    }
}

/// Reads a whole custom-format archive from `r`, passing over the data blocks' bytes without
/// copying them, and returns the data offsets its TOC lacks.
pub fn data_offsets<R: Skip>(r: R) -> Result<DataOffsets, String> {
    let mut a = Archive::new(r);
    let off_size = read_header(&mut a)?;
    let count = a.int()?;
    let mut unset: HashMap<i64, u64> = HashMap::new();
    for _ in 0..count {
        let e = read_toc_entry(&mut a, off_size)?;
        if e.offset_flag == OFFSET_POS_NOT_SET {
            unset.insert(e.dump_id, e.offset_at);
        }
    }
    let mut offsets = DataOffsets::default();
    loop {
        let at = a.pos;
        let kind = match a.byte_or_end()? {
            None => return Ok(offsets),
            Some(k) => k,
        };
        let dump_id = a.int()?;
        match kind {
            BLK_DATA => a.skip_chunks()?,
            BLK_BLOBS => {
                while a.int()? != 0 {
                    a.skip_chunks()?;
                }
            }
            other => return Err(format!("unknown data block type {other}")),
        }
        if let Some(flag_at) = unset.remove(&dump_id) {
            let mut bytes = vec![OFFSET_POS_SET];
            bytes.extend((0..off_size).map(|i| if i < 8 { (at >> (8 * i)) as u8 } else { 0 }));
            offsets.patches.push((flag_at, bytes));
        }
    }
}

/// What a failed read of the archive means: cut short, or the reader's own error.
fn read_error(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "the archive ends early".to_string(),
        _ => format!("reading the archive: {e}"),
    }
}

struct Archive<R> {
    r: R,
    int_size: usize,
    version: u32,
    /// Bytes read (or skipped) so far.
    pos: u64,
}

impl<R: Read> Archive<R> {
    fn new(r: R) -> Archive<R> {
        Archive {
            r,
            int_size: 4,
            version: 0,
            pos: 0,
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.r.read_exact(buf).map_err(read_error)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn byte_or_end(&mut self) -> Result<Option<u8>, String> {
        let mut b = [0u8];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.pos += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the archive: {e}")),
            }
        }
    }

    /// A sign byte, then `int_size` bytes, least significant first.
    /// Read in one call: a -Z0 dump has an int before every row.
    fn int(&mut self) -> Result<i64, String> {
        let mut b = [0u8; 9];
        let b = &mut b[..1 + self.int_size];
        self.exact(b)?;
        let value = b[1..]
            .iter()
            .enumerate()
            .fold(0i64, |v, (i, &x)| v | (x as i64) << (8 * i));
        Ok(if b[0] != 0 { -value } else { value })
    }

    /// A length, then that many bytes; a negative length is a null string.
    fn string(&mut self) -> Result<Option<String>, String> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| "string length out of range".to_string())?;
        if len > 256 * 1024 * 1024 {
            return Err(format!("implausible string length {len}"));
        }
        let mut buf = vec![0u8; len];
        self.exact(&mut buf)?;
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    /// A data block's chunks: a length and that many bytes, until a zero length.
    fn chunks(&mut self, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> Result<(), String> {
        loop {
            let len = self.int()?;
            if len == 0 {
                return Ok(());
            }
            let mut left =
                u64::try_from(len).map_err(|_| format!("negative chunk length {len}"))?;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                self.exact(&mut buf[..n])?;
                each(&buf[..n]);
                left -= n as u64;
            }
        }
    }
}

impl<R: Skip> Archive<R> {
    /// A data block's chunks, passed over.
    fn skip_chunks(&mut self) -> Result<(), String> {
        loop {
            let len = self.int()?;
            if len == 0 {
                return Ok(());
            }
            let len = u64::try_from(len).map_err(|_| format!("negative chunk length {len}"))?;
            self.r.skip(len).map_err(read_error)?;
            self.pos += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::copytext::digest_lines as digest;

    /// Writes archives the way pg_dump does, for the parser's tests.
    struct Writer {
        out: Vec<u8>,
        minor: u8,
    }

    impl Writer {
        fn int(&mut self, v: i64) {
            self.out.push(u8::from(v < 0));
            self.out
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn string(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
        }
        fn header(minor: u8) -> Writer {
            let mut w = Writer {
                out: b"PGDMP".to_vec(),
                minor,
            };
            w.out.extend_from_slice(&[1, minor, 0, 4, 8, FORMAT_CUSTOM]);
            if minor >= 15 {
                w.out.push(0);
            } else {
                w.int(0);
            }
            for v in [1, 2, 3, 4, 5, 126, 0] {
                w.int(v);
            }
            for s in ["db", "15.4", "15.4"] {
                w.string(Some(s));
            }
            w
        }
        fn entry(&mut self, id: i64, desc: &str, ns: &str, tag: &str, defn: &str, copy: &str) {
            self.int(id);
            self.int(i64::from(desc == "TABLE DATA"));
            self.string(Some("0"));
            self.string(Some("0"));
            self.string(Some(tag));
            self.string(Some(desc));
            self.int(2);
            self.string(Some(defn));
            self.string(Some(""));
            self.string(Some(copy));
            self.string(Some(ns));
            self.string(Some(""));
            self.string(Some("heap"));
            if self.minor >= 16 {
                self.int(114);
            }
            self.string(Some("owner"));
            self.string(Some("false"));
            self.string(Some("1"));
            self.string(None);
            self.out.push(1);
            self.out.extend_from_slice(&[0; 8]);
        }
        fn data(&mut self, kind: u8, id: i64, chunks: &[&[u8]]) {
            self.out.push(kind);
            self.int(id);
            for c in chunks {
                self.int(c.len() as i64);
                self.out.extend_from_slice(c);
            }
            self.int(0);
        }
    }

    fn sample(minor: u8) -> Vec<u8> {
        let mut w = Writer::header(minor);
        w.int(4);
        w.entry(
            1,
            "ENCODING",
            "",
            "ENCODING",
            "SET client_encoding = 'UTF8';\n",
            "",
        );
        w.entry(
            2,
            "TABLE DATA",
            "public",
            "t",
            "",
            "COPY public.t (a, b) FROM stdin;\n",
        );
        w.entry(
            3,
            "TABLE DATA",
            "s p",
            "Empty",
            "",
            "COPY \"s p\".\"Empty\"  FROM stdin;\n",
        );
        w.entry(4, "BLOBS", "", "BLOBS", "", "");
        // rows, then the end-of-data line and two empty lines, as pg_dump writes them
        w.data(
            BLK_DATA,
            2,
            &[b"1\tx\n", b"2\ty", b"\n3\t\\N\n", b"\\.\n\n\n"],
        );
        w.data(BLK_DATA, 3, &[]);
        // one large object: oid, its chunks, then the closing zero oid
        w.out.push(BLK_BLOBS);
        w.int(4);
        w.int(16384);
        w.int(3);
        w.out.extend_from_slice(b"lob");
        w.int(0);
        w.int(0);
        w.out
    }

    #[test]
    fn data_offsets_are_filled_in_pointing_at_each_block_and_nothing_else_changes() {
        let original = sample(16);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &original).unwrap();
        // Found as the archive streams past in batches of 7 bytes, so that a field or a chunk
        // spans batches.
        let mut batches = original.chunks(7).map(<[u8]>::to_vec);
        let offsets = data_offsets(ChannelReader::new(|| batches.next())).unwrap();
        assert_eq!(offsets.len(), 3, "two tables and the large objects");
        offsets.write_to(&file).unwrap();
        let cut = &original[..original.len() - 3];
        assert!(data_offsets(cut).unwrap_err().contains("ends early"));
        let mut patched = Vec::new();
        std::io::Seek::rewind(&mut file).unwrap();
        std::io::Read::read_to_end(&mut file, &mut patched).unwrap();
        assert_eq!(patched.len(), original.len());
        let mut a = Archive::new(patched.as_slice());
        let off_size = read_header(&mut a).unwrap();
        let count = a.int().unwrap();
        let mut changed = 0;
        for _ in 0..count {
            let e = read_toc_entry(&mut a, off_size).unwrap();
            let at = e.offset_at as usize;
            if e.desc == "ENCODING" {
                assert_eq!(e.offset_flag, OFFSET_POS_NOT_SET, "no data: left as it was");
                continue;
            }
            assert_eq!(e.offset_flag, OFFSET_POS_SET, "{}", e.desc);
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&patched[at + 1..at + 9]);
            let block = u64::from_le_bytes(offset) as usize;
            // The block there is this entry's: its type, then the dump id as an int.
            assert!([BLK_DATA, BLK_BLOBS].contains(&patched[block]));
            let mut b = Archive::new(&patched[block + 1..]);
            b.int_size = 4;
            assert_eq!(b.int().unwrap(), e.dump_id);
            changed += 1 + off_size;
        }
        let differing = original
            .iter()
            .zip(&patched)
            .filter(|(x, y)| x != y)
            .count();
        assert!(
            differing <= changed && differing >= 3,
            "{differing} bytes changed"
        );
        // And the scan reads the patched archive exactly as the original.
        assert_eq!(scan(patched.as_slice()), scan(original.as_slice()));
    }

    #[test]
    fn reads_versions_14_to_16() {
        for minor in [14, 15, 16] {
            let scan = scan(&sample(minor)[..]).unwrap();
            assert_eq!(scan.encoding.as_deref(), Some("UTF8"));
            let (rows, checksum) = digest(&["1\tx", "2\ty", "3\t\\N"]);
            assert_eq!(
                scan.tables,
                vec![
                    TableData {
                        schema: "public".into(),
                        name: "t".into(),
                        copy_out: "COPY public.t (a, b) TO STDOUT".into(),
                        rows,
                        checksum,
                    },
                    TableData {
                        schema: "s p".into(),
                        name: "Empty".into(),
                        copy_out: "COPY \"s p\".\"Empty\"  TO STDOUT".into(),
                        rows: 0,
                        checksum: format!("{:032x}", 0),
                    },
                ],
                "version 1.{minor}"
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_whole() {
        let whole = sample(15);
        for cut in [3, 20, whole.len() - 1] {
            assert!(scan(&whole[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = whole.clone();
        other[6] = 17;
        assert!(scan(&other[..]).unwrap_err().contains("1.17"));
        let mut compressed = whole;
        compressed[11] = 1; // the algorithm byte of a 1.15 header
        assert!(scan(&compressed[..]).unwrap_err().contains("compressed"));
    }

    #[test]
    fn the_scan_alongside_sees_what_the_reader_read() {
        let bytes = sample(16);
        let (mut tee, handle) = scan_alongside(&bytes[..]);
        let mut copy = Vec::new();
        // small reads, as a pipe would give
        let mut buf = [0u8; 7];
        loop {
            let n = tee.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            copy.extend_from_slice(&buf[..n]);
        }
        drop(tee);
        assert_eq!(copy, bytes);
        assert_eq!(handle.join().unwrap().unwrap(), scan(&bytes[..]).unwrap());
    }

    #[test]
    fn block_spans_and_the_deframer_give_back_each_table_s_copy_text() {
        let bytes = sample(16);
        let scan = scan(&bytes[..]).unwrap();
        let toc = read_toc(&bytes[..]).unwrap();
        assert_eq!(toc.end, scan.toc_end);
        assert_eq!(toc.entries.len(), 4);
        let spans: Vec<(i64, &str)> = scan
            .blocks
            .iter()
            .map(|b| (b.dump_id, b.desc.as_str()))
            .collect();
        assert_eq!(spans, [(2, "TABLE DATA"), (3, "TABLE DATA"), (4, "BLOBS")]);
        assert_eq!(scan.blocks[0].start, scan.toc_end);
        assert_eq!(scan.blocks[1].start, scan.blocks[0].end);
        assert_eq!(scan.blocks[2].end, bytes.len() as u64);
        let expected: [&[u8]; 2] = [b"1\tx\n2\ty\n3\t\\N\n\\.\n\n\n", b""];
        for (block, want) in scan.blocks.iter().zip(expected) {
            let whole = &bytes[block.start as usize..block.end as usize];
            for piece in [1, 2, 5, whole.len()] {
                let mut d = Deframer::new(toc.int_size, block.dump_id);
                let mut out = Vec::new();
                for p in whole.chunks(piece) {
                    assert!(!d.is_done());
                    d.feed(p, &mut out).unwrap();
                }
                assert!(d.is_done(), "pieces of {piece}");
                assert_eq!(out, want, "pieces of {piece}");
            }
        }
        let first = &bytes[scan.blocks[0].start as usize..scan.blocks[0].end as usize];
        let mut wrong = Deframer::new(toc.int_size, 3);
        assert!(wrong
            .feed(first, &mut Vec::new())
            .unwrap_err()
            .contains("entry 3"));
        let mut past = Deframer::new(toc.int_size, 2);
        let mut longer = first.to_vec();
        longer.push(0);
        assert!(past
            .feed(&longer, &mut Vec::new())
            .unwrap_err()
            .contains("past the end"));
    }

    #[test]
    fn the_deframer_gives_back_each_large_object_s_pieces() {
        let bytes = sample(16);
        let scan = scan(&bytes[..]).unwrap();
        let block = &scan.blocks[2];
        assert_eq!(block.desc, "BLOBS");
        let whole = &bytes[block.start as usize..block.end as usize];
        for piece in [1, 3, whole.len()] {
            let mut d = Deframer::large_objects(4, block.dump_id);
            let mut pieces: Vec<ObjectPiece> = Vec::new();
            for p in whole.chunks(piece) {
                for got in d.feed_objects(p).unwrap() {
                    match pieces.last_mut() {
                        Some(last)
                            if last.oid == got.oid
                                && last.at + last.data.len() as u64 == got.at =>
                        {
                            last.data.extend_from_slice(&got.data)
                        }
                        _ => pieces.push(got),
                    }
                }
            }
            assert!(d.is_done());
            assert_eq!(
                pieces,
                [ObjectPiece {
                    oid: 16384,
                    at: 0,
                    data: b"lob".to_vec()
                }],
                "pieces of {piece}"
            );
        }
        let mut rows = Deframer::new(4, block.dump_id);
        assert!(
            rows.feed(whole, &mut Vec::new()).is_err(),
            "a BLOBS block is not table data"
        );
    }
}
