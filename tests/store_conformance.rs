//! One conformance suite that every store passes: the local directory, and S3 against the
//! moto server on loopback.

mod common;

use backstop::error::Kind;
use backstop::ops::Cancel;
use backstop::repo::lock::{LockInfo, LockRequest, Mode, RunLock};
use backstop::store::fs::FsStore;
use backstop::store::s3::{S3Config, S3Store};
use backstop::store::{Put, PutMode, Store};
use common::s3::{Moto, KEY_ID, SECRET};
use std::sync::Arc;
use std::time::Duration;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn conformance(store: Arc<dyn Store>) {
    store.check().await.unwrap();

    // put / get / stat / list / delete
    assert_eq!(
        store
            .put_new("blobs/aa/one", b"one".to_vec())
            .await
            .unwrap(),
        Put::Created
    );
    assert_eq!(
        store.get_opt("blobs/aa/one").await.unwrap().unwrap(),
        b"one"
    );
    assert_eq!(store.stat("blobs/aa/one").await.unwrap(), Some(3));
    assert_eq!(store.get_opt("blobs/aa/none").await.unwrap(), None);
    assert_eq!(store.stat("blobs/aa/none").await.unwrap(), None);
    store.put_new("blobs/bb/two", vec![]).await.unwrap();
    let listed: Vec<_> = store
        .list("blobs/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.size))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("blobs/aa/one".to_string(), 3),
            ("blobs/bb/two".to_string(), 0)
        ]
    );
    assert!(store.list("nothing/").await.unwrap().is_empty());
    store.delete("blobs/bb/two").await.unwrap();
    store.delete("blobs/bb/two").await.unwrap();
    assert_eq!(store.stat("blobs/bb/two").await.unwrap(), None);

    // no overwrite
    assert_eq!(
        store
            .put_new("blobs/aa/one", b"other".to_vec())
            .await
            .unwrap(),
        Put::Exists
    );
    assert_eq!(
        store.get_opt("blobs/aa/one").await.unwrap().unwrap(),
        b"one"
    );

    // a large object (multipart on S3: the test store's part size is 5 MiB)
    let big = pattern(21 * 1024 * 1024 + 7, 3);
    assert_eq!(
        store.put_new("big/object", big.clone()).await.unwrap(),
        Put::Created
    );
    assert_eq!(store.get_opt("big/object").await.unwrap().unwrap(), big);
    assert_eq!(
        store
            .put_new("big/object", pattern(11 * 1024 * 1024, 9))
            .await
            .unwrap(),
        Put::Exists
    );
    assert_eq!(store.get_opt("big/object").await.unwrap().unwrap(), big);

    // listings past 1000 keys
    let mut tasks = Vec::new();
    for i in 0..1100 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.put_new(&format!("many/{i:05}"), vec![1]).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let many = store.list("many/").await.unwrap();
    assert_eq!(many.len(), 1100);
    assert_eq!(many[0].key, "many/00000");
    assert_eq!(many[1099].key, "many/01099");

    // concurrent writers of one key: exactly one wins, and its content stays
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            (i, s.put_new("race/key", vec![i; 1000]).await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, put) = t.await.unwrap();
        if put == Put::Created {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        store.get_opt("race/key").await.unwrap().unwrap(),
        vec![winners[0]; 1000]
    );

    // an interrupted upload leaves nothing visible, or the whole object: never a part
    let data = pattern(17 * 1024 * 1024, 5);
    let s = store.clone();
    let d = data.clone();
    let upload = tokio::spawn(async move { s.put_new("interrupted/object", d).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    upload.abort();
    let _ = upload.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    match store.get_opt("interrupted/object").await.unwrap() {
        None => {}
        Some(got) => assert_eq!(got, data, "a partial object became visible"),
    }

    // mutable puts, for locks
    assert_eq!(
        store
            .put("locks/x.json", b"a".to_vec(), PutMode::CreateMutable)
            .await
            .unwrap(),
        Put::Created
    );
    assert_eq!(
        store
            .put("locks/x.json", b"b".to_vec(), PutMode::CreateMutable)
            .await
            .unwrap(),
        Put::Exists
    );
    store
        .put("locks/x.json", b"c".to_vec(), PutMode::Replace)
        .await
        .unwrap();
    assert_eq!(store.get_opt("locks/x.json").await.unwrap().unwrap(), b"c");
    store.delete("locks/x.json").await.unwrap();

    // run locks: modes, contention, release, takeover of an expired lock
    let ttl = Duration::from_secs(60);
    let lock = |mode, policy: &'static str, operation: &'static str, run_id: &'static str| {
        RunLock::acquire(
            store.clone(),
            LockRequest {
                mode,
                policy,
                operation,
                run_id,
                ttl,
                wait: Duration::ZERO,
                queue_own: false,
            },
            Cancel::new(),
        )
    };
    let held = lock(Mode::Shared, "p", "backup", "run-1").await.unwrap();
    let e = lock(Mode::Shared, "p", "backup", "run-2")
        .await
        .err()
        .expect("a second backup of the policy must fail");
    assert_eq!(e.kind, Kind::Locked);
    assert!(
        e.message.contains("backup run run-1 of policy p") && e.message.contains("pid"),
        "{}",
        e.message
    );
    // Shared holders coexist: a verify of the same policy, a backup of another.
    let verify = lock(Mode::Shared, "p", "verify", "run-4").await.unwrap();
    let other = lock(Mode::Shared, "q", "backup", "run-5").await.unwrap();
    let e = lock(Mode::Exclusive, "p", "prune", "run-6")
        .await
        .err()
        .expect("an exclusive lock must wait for shared holders");
    assert_eq!(e.kind, Kind::Locked);
    for l in [held, verify, other] {
        l.release().await;
    }
    assert!(store.list("locks/").await.unwrap().is_empty());
    let prune = lock(Mode::Exclusive, "p", "prune", "run-7").await.unwrap();
    let e = lock(Mode::Shared, "q", "check", "run-8")
        .await
        .err()
        .expect("the exclusive holder excludes everyone");
    assert!(e.message.contains("prune run run-7"), "{}", e.message);
    prune.release().await;
    // Two backups of one policy that start at the same moment: exactly one gets the lock.
    let (a, b) = tokio::join!(
        lock(Mode::Shared, "p", "backup", "run-a"),
        lock(Mode::Shared, "p", "backup", "run-b")
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one of two racing backups proceeds"
    );
    let loser = a.as_ref().err().or(b.as_ref().err()).unwrap();
    assert_eq!(loser.kind, Kind::Locked);
    for l in [a, b].into_iter().flatten() {
        l.release().await;
    }
    // An expired lock of the older format (one per policy, no mode) is taken over.
    let dead = LockInfo {
        mode: Mode::Exclusive,
        policy: "p".into(),
        operation: "backup".into(),
        run_id: "dead-run".into(),
        owner: "x".into(),
        host: "gone".into(),
        pid: 1,
        created_at: chrono::Utc::now() - chrono::Duration::hours(2),
        expires_at: chrono::Utc::now() - chrono::Duration::hours(1),
    };
    let mut old = serde_json::to_value(&dead).unwrap();
    old.as_object_mut().unwrap().remove("mode");
    store
        .put(
            "locks/p.json",
            serde_json::to_vec(&old).unwrap(),
            PutMode::CreateMutable,
        )
        .await
        .unwrap();
    let taken = lock(Mode::Shared, "p", "backup", "run-3").await.unwrap();
    assert_eq!(store.stat("locks/p.json").await.unwrap(), None);
    let now: LockInfo =
        serde_json::from_slice(&store.get_opt("locks/run-3.json").await.unwrap().unwrap()).unwrap();
    assert_eq!(now.run_id, "run-3");
    taken.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(FsStore::new(dir.path().join("repo")))).await;
}

fn s3_config(moto: &Moto, bucket: &str, object_lock: Option<(String, u32)>) -> S3Config {
    S3Config {
        bucket: bucket.into(),
        prefix: "repo/prefix".into(),
        endpoint: Some(moto.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: Some(KEY_ID.into()),
        secret_access_key: Some(SECRET.into()),
        object_lock,
        checksums: "auto".into(),
        connections: 8,
        part_size: 5 * 1024 * 1024,
    }
}

#[test]
fn s3_store_conforms_against_a_real_server_with_object_lock() {
    let moto = Moto::start();
    moto.create_bucket("conformance", true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(
            S3Store::connect(s3_config(
                &moto,
                "conformance",
                Some(("governance".into(), 7)),
            ))
            .await
            .unwrap(),
        );
        conformance(store.clone()).await;
        // Immutable objects carry the retention (as the server reports it on HEAD).
        let c = moto.client();
        for key in ["repo/prefix/blobs/aa/one", "repo/prefix/big/object"] {
            let h = c
                .head_object()
                .bucket("conformance")
                .key(key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                h.object_lock_mode().map(|m| m.as_str()),
                Some("GOVERNANCE"),
                "{key}"
            );
            let until = h
                .object_lock_retain_until_date()
                .expect("retain-until date")
                .secs();
            let expect = (chrono::Utc::now() + chrono::Duration::days(7)).timestamp();
            assert!(
                (until - expect).abs() < 600,
                "{key}: retain until {until}, expected about {expect}"
            );
        }
        // No multipart upload is left behind.
        let uploads = c
            .list_multipart_uploads()
            .bucket("conformance")
            .send()
            .await
            .unwrap();
        assert!(
            uploads.uploads().is_empty(),
            "stray multipart uploads: {:?}",
            uploads.uploads()
        );
    });
    // Keys live under the prefix.
    assert!(moto
        .keys("conformance")
        .iter()
        .all(|k| k.starts_with("repo/prefix/")));
}

#[test]
fn s3_store_refuses_object_lock_on_a_bucket_without_it() {
    let moto = Moto::start();
    moto.create_bucket("plain", false);
    let rt = common::s3::rt();
    rt.block_on(async {
        let store = S3Store::connect(s3_config(&moto, "plain", Some(("governance".into(), 7))))
            .await
            .unwrap();
        let e = store.check().await.unwrap_err();
        assert_eq!(e.kind, Kind::Input);
        assert!(
            e.message.contains("bucket plain") && e.message.contains("object lock"),
            "{}",
            e.message
        );
        let store = S3Store::connect(s3_config(&moto, "missing", None))
            .await
            .unwrap();
        let e = store.check().await.unwrap_err();
        assert!(
            e.message.contains("bucket missing") && e.message.contains("does not exist"),
            "{}",
            e.message
        );
    });
}
