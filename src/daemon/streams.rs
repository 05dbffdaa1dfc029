//! The daemon's change streams: one follower per policy with `[stream]`, restarted after a
//! failure (30 s later, so a database outage does not spin), stopped with the daemon or a
//! reload. A follower that ends other than by the daemon's own stop raises `stream_stopped`
//! once per outage; a missing slot (dropped, or never set up) is waited for, since `--setup`
//! or the next backup re-creates it.

use crate::ops::{self, Cancel, Ctx, Reason};
use crate::policy::Policy;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a failed follower waits before it starts again.
const RETRY: Duration = Duration::from_secs(30);

/// The running followers, by policy.
#[derive(Default)]
pub struct Streams {
    running: BTreeMap<String, (Cancel, std::thread::JoinHandle<()>)>,
}

impl Streams {
    /// Starts a follower for each policy with `[stream]` and stops those of policies that no
    /// longer have one (a reload restarts every follower, so each runs its current policy).
    pub fn reconcile(&mut self, policies: &[Arc<Policy>], shared: Arc<super::Shared>) {
        self.stop_all();
        for p in policies.iter().filter(|p| p.stream.is_some()) {
            let cancel = Cancel::new();
            let (policy, c, shared) = (p.clone(), cancel.clone(), shared.clone());
            let handle = tokio::runtime::Handle::current();
            // The follower's future is not Send (it holds its session across awaits): it runs
            // on a thread of its own, its work on the runtime's workers.
            let thread = std::thread::Builder::new()
                .name(format!("stream-{}", p.name))
                .spawn(move || handle.block_on(supervise(policy, c, shared)));
            match thread {
                Ok(t) => {
                    self.running.insert(p.name.clone(), (cancel, t));
                }
                Err(e) => tracing::error!("cannot start the stream of policy {}: {e}", p.name),
            }
        }
    }

    /// Stops every follower and waits for them (each commits nothing after its stop).
    pub fn stop_all(&mut self) {
        for (_, (cancel, _)) in self.running.iter() {
            cancel.cancel(Reason::Requested);
        }
        for (name, (_, thread)) in std::mem::take(&mut self.running) {
            if thread.join().is_err() {
                tracing::warn!("the stream of policy {name} ended with a panic");
            }
        }
    }
}

async fn supervise(policy: Arc<Policy>, cancel: Cancel, shared: Arc<super::Shared>) {
    let mut alerted = false;
    while !cancel.is_cancelled() {
        let ended = follow_once(&policy, &cancel, &shared).await;
        if cancel.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => alerted = false,
            Err(e) => {
                if !alerted {
                    crate::notify::stream_stopped(&policy, &e.message).await;
                    alerted = true;
                } else {
                    tracing::warn!(
                        "stream of policy {} still stopped: {}",
                        policy.name,
                        e.message
                    );
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

async fn follow_once(
    policy: &Policy,
    cancel: &Cancel,
    shared: &super::Shared,
) -> crate::error::Result<()> {
    let repo = ops::open_repo(policy).await?;
    let ctx = Ctx {
        cancel: cancel.child(),
        lock_wait: Duration::from_secs(600),
        queue_own_locks: true,
        ..Ctx::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let relay = async {
        while let Some(event) = rx.recv().await {
            if let ops::stream::Event::Sealed(seg) = &event {
                let mut m = crate::util::lock(&shared.streams);
                let s = m.entry(policy.name.clone()).or_default();
                s.last_commit = Some(seg.last_commit_at);
                s.segments += 1;
            }
            if let ops::stream::Event::Lag { bytes, .. }
            | ops::stream::Event::LagCleared { bytes }
            | ops::stream::Event::Held { bytes } = &event
            {
                crate::util::lock(&shared.streams)
                    .entry(policy.name.clone())
                    .or_default()
                    .lag_bytes = Some(*bytes);
            }
            crate::notify::stream_event(policy, &event).await;
        }
    };
    let follow = async {
        let r = ops::stream::follow(policy, &repo, &ctx, &tx).await;
        drop(tx);
        r
    };
    let (ended, ()) = tokio::join!(follow, relay);
    match ended {
        Err(e) if cancel.is_cancelled() && matches!(e.kind, crate::error::Kind::Cancelled) => {
            Ok(())
        }
        other => other,
    }
}
