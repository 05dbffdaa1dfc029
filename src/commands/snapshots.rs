use super::{human_bytes, print_json};
use crate::error::Result;
use crate::ops::open_repo;
use crate::policy::Policy;
use crate::record::{SnapshotDb, SnapshotEntry, SnapshotStorage, SnapshotsRecord, StreamSpan};

pub async fn run(policy: &Policy, json: bool) -> Result<()> {
    let repo = open_repo(policy).await?;
    let listing = repo.listing().await?;
    let segments = if policy.stream.is_some() {
        crate::repo::streams::list(repo.store.as_ref(), &policy.name).await?
    } else {
        Vec::new()
    };
    let times: Vec<_> = listing.snapshots.iter().map(|m| m.consistent_at).collect();
    let span = |i: usize| {
        let (from, to) = (times[i], times.get(i + 1).copied());
        let within: Vec<_> = segments
            .iter()
            .filter(|s| s.last_commit_at > from && to.is_none_or(|t| s.first_commit_at < t))
            .collect();
        (!within.is_empty()).then(|| StreamSpan {
            segments: within.len() as u64,
            transactions: within.iter().map(|s| s.transactions).sum(),
            first_commit_at: within.iter().map(|s| s.first_commit_at).min(),
            last_commit_at: within.iter().map(|s| s.last_commit_at).max(),
        })
    };
    let snapshots: Vec<SnapshotEntry> = listing
        .snapshots
        .into_iter()
        .enumerate()
        .map(|(i, m)| SnapshotEntry {
            stream: span(i),
            id: m.id,
            consistent_at: m.consistent_at,
            finished_at: m.finished_at,
            db: m.db.map(|d| SnapshotDb {
                tables: d.tables,
                rows: d.rows,
                bytes_plain: d.bytes_plain,
            }),
            storage: m.storage.map(|s| SnapshotStorage {
                objects: s.objects,
                bytes_plain: s.bytes_plain,
            }),
            files: m.files,
            git: m.git,
            bytes_referenced: m.bytes_referenced,
        })
        .collect();
    if json {
        print_json(&SnapshotsRecord {
            kind: crate::record::Job::Snapshots,
            policy: policy.name.clone(),
            snapshots,
            damaged: listing.damaged,
        });
        return Ok(());
    }
    for d in &listing.damaged {
        eprintln!("damaged: snapshot {}: {} ({})", d.id, d.problem, d.key);
    }
    if snapshots.is_empty() {
        println!("no snapshots of policy {}", policy.name);
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:>7} {:>12} {:>10} {:>8} {:>6} {:>4} {:>10}",
        "ID", "CONSISTENT AT (UTC)", "TABLES", "ROWS", "DUMP", "OBJECTS", "FILES", "GIT", "STORED"
    );
    for s in &snapshots {
        println!(
            "{:<24} {:<20} {:>7} {:>12} {:>10} {:>8} {:>6} {:>4} {:>10}",
            s.id,
            s.consistent_at.format("%Y-%m-%d %H:%M:%S"),
            s.db.as_ref().map(|d| d.tables).unwrap_or(0),
            s.db.as_ref().map(|d| d.rows).unwrap_or(0),
            human_bytes(s.db.as_ref().map(|d| d.bytes_plain).unwrap_or(0)),
            s.storage.as_ref().map(|d| d.objects).unwrap_or(0),
            s.files.as_ref().map(|f| f.files).unwrap_or(0),
            s.git.as_ref().map(|g| g.repositories.len()).unwrap_or(0),
            human_bytes(s.bytes_referenced)
        );
        if let Some(st) = &s.stream {
            println!(
                "  then the stream: {} transactions in {} segments, to {}",
                st.transactions,
                st.segments,
                st.last_commit_at
                    .map_or("?".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            );
        }
    }
    Ok(())
}
