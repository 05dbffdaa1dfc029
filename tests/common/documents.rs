//! The documents fixture: a bucket tree with nested folders, non-ASCII names, spaces and
//! `#`, `%`, `+`, `?`, `=` in names, an empty file, identical files in two places, a file over
//! 16 MiB and hundreds of small files. Content is pseudo-random (incompressible) and
//! deterministic.

use std::collections::BTreeMap;
use std::path::Path;

pub const BUCKET: &str = "documents";
pub const DUP_SIZE: usize = 300 * 1024;

pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Writes the tree under `root/documents`; returns name -> content.
pub fn write_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(
        "menus/2026/Speisekarte Grüße.pdf".to_string(),
        bytes(50_000, 1),
    );
    files.insert(
        "contracts/#1 contract + tax=20% final?.txt".to_string(),
        bytes(7_000, 2),
    );
    files.insert("메뉴/김치찌개 레시피.md".to_string(), bytes(3_000, 3));
    files.insert("empty.txt".to_string(), Vec::new());
    files.insert("dup/original.bin".to_string(), bytes(DUP_SIZE, 4));
    files.insert(
        "elsewhere/copy of original.bin".to_string(),
        bytes(DUP_SIZE, 4),
    );
    files.insert(
        "scans/big scan.tiff".to_string(),
        bytes(17 * 1024 * 1024 + 123, 5),
    );
    for i in 0..300 {
        files.insert(
            format!("small/note-{i:03}.txt"),
            bytes(500 + i * 7, 100 + i as u64),
        );
    }
    for (name, data) in &files {
        let p = root.join(BUCKET).join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    files
}

/// Every file under `dir`, name -> content.
pub fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for p in super::files_under(dir) {
        let name = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
        out.insert(name, std::fs::read(&p).unwrap());
    }
    out
}

/// Replaces the fixture's storage.objects rows with one row per file of the tree.
pub fn sync_rows(env: &super::Env, files: &BTreeMap<String, Vec<u8>>) {
    let mut sql = String::from("delete from storage.objects;");
    for (i, name) in files.keys().enumerate() {
        sql.push_str(&format!(
            "insert into storage.objects (id, bucket_id, name) values (md5('doc{i}')::uuid, '{BUCKET}', '{}');",
            name.replace('\'', "''")
        ));
    }
    env.source.psql(super::FIXTURE_DB, &sql);
}
