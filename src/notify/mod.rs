//! Notifications (`[notify]`): a webhook (Slack-compatible text, or the event as JSON), email,
//! and healthchecks.io-style pings. Sent by the daemon and by runs started from cron alike.
//!
//! No alert storms: [`events_after_run`] sends `failure` (`verify_failure` for verify) only
//! when a job starts failing (its previous run succeeded, or there was none), and `recovered`
//! once when it succeeds again; the previous outcome comes from the repository's run records,
//! so it holds across processes. `rpo_breach` and `rpo_recovered` are edge-triggered by the
//! daemon's minute check ([`RpoWatch`]). Health-check pings go out for every run whatever `on`
//! says (`URL/start`, then `URL` or `URL/fail` with the run record), since that service does its
//! own alerting.
//!
//! Delivery is retried with backoff ([`ATTEMPTS`] tries, each bounded by [`TIMEOUT`]), never
//! fails or blocks a job beyond that, and never logs a URL (webhook and ping URLs carry tokens).
//! Email goes over SMTP ([`email`]), with the same retries.

pub mod email;

use crate::policy::{Notify, Policy};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::time::Duration;

pub const ATTEMPTS: u32 = 3;
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The events one finished run raises, before `on` filters them.
pub fn events_after_run(
    job: &str,
    ok: bool,
    previous_ok: Option<bool>,
    rto_met: Option<bool>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    match (ok, previous_ok) {
        (false, Some(false)) => {}
        (false, _) => out.push(if job == "verify" {
            "verify_failure"
        } else {
            "failure"
        }),
        (true, Some(false)) => out.push("recovered"),
        (true, _) => {}
    }
    if ok {
        out.push("success");
    }
    if job == "verify" && rto_met == Some(false) {
        out.push("rto_breach");
    }
    out
}

/// Edge detection of RPO breaches for one policy.
#[derive(Debug, Default, Clone)]
pub struct RpoWatch {
    breached: bool,
    /// When the watch first looked: a policy with no recovery point yet is judged from then,
    /// so a new policy is not in breach before its first backup is due.
    first_seen: Option<DateTime<Utc>>,
}

impl RpoWatch {
    /// [`RpoWatch::observe`] at `now`, with the newest recovery point's time; without one,
    /// the age counts from when the watch first looked.
    pub fn observe_at(
        &mut self,
        newest: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        rpo: Duration,
    ) -> Option<&'static str> {
        let since = *self.first_seen.get_or_insert(now);
        let age = (now - newest.unwrap_or(since)).to_std().unwrap_or_default();
        self.observe(Some(age), rpo)
    }

    /// `rpo_breach` when the age first passes the RPO, `rpo_recovered` when it first falls
    /// back under it; nothing otherwise.
    pub fn observe(&mut self, age: Option<Duration>, rpo: Duration) -> Option<&'static str> {
        let breached = age.is_none_or(|a| a > rpo);
        let event = match (self.breached, breached) {
            (false, true) => Some("rpo_breach"),
            (true, false) => Some("rpo_recovered"),
            _ => None,
        };
        self.breached = breached;
        event
    }
}

/// What a message says.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: String,
    pub policy: String,
    pub job: String,
    /// Snapshot or run id.
    pub id: Option<String>,
    pub error: Option<String>,
    /// Measured figures, e.g. "duration 12.3s", "restore 40.2s (RTO 3600s)", "age 26h (RPO 24h)".
    pub figures: Vec<String>,
    pub record: Value,
}

impl Message {
    pub fn text(&self) -> String {
        let mut t = format!(
            "backstop {}: policy {} {} on {}",
            self.event,
            self.policy,
            self.job,
            crate::util::host()
        );
        if let Some(id) = &self.id {
            t.push_str(&format!(" ({id})"));
        }
        if !self.figures.is_empty() {
            t.push_str(&format!(": {}", self.figures.join(", ")));
        }
        if let Some(e) = &self.error {
            t.push_str(&format!("\nerror: {e}"));
        }
        t
    }

    fn body(&self, format: &str) -> Value {
        if format == "json" {
            return json!({
                "event": self.event, "policy": self.policy, "job": self.job, "host": crate::util::host(),
                "id": self.id, "error": self.error, "figures": self.figures, "record": self.record,
            });
        }
        let text = self.text();
        json!({"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]})
    }
}

/// Runs `attempt` up to [`ATTEMPTS`] times with backoff; true when one succeeds. Each
/// failure is logged under `what`, which never holds a URL.
async fn retry<F, Fut>(what: &str, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let backoff = crate::retry::Backoff {
        attempts: ATTEMPTS,
        first: Duration::from_millis(500),
    };
    let tries = |n: u32| {
        let tried = attempt();
        async move {
            tried.await.map_err(|e| {
                tracing::warn!("{what}: {e} (attempt {n} of {ATTEMPTS})");
                crate::retry::Attempt::Again(())
            })
        }
    };
    backoff.run(tries, |_, _| {}).await.is_ok()
}

/// POSTs `body` to `url`, retrying with backoff; true when delivered. Errors are logged
/// without the URL.
async fn post(url: &str, body: Option<&Value>, what: &str) -> bool {
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("{what}: {}", e.without_url());
            return false;
        }
    };
    retry(what, || async {
        let mut req = client.post(url);
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered HTTP {}", r.status().as_u16())),
            Err(e) => Err(e.without_url().to_string()),
        }
    })
    .await
}

/// Sends `message` where `[notify]` says, if its event is in `on`.
pub async fn send(notify: &Notify, message: &Message) {
    if !notify.on.iter().any(|e| e == &message.event) {
        return;
    }
    if let Some(url) = &notify.webhook {
        let what = format!("webhook for {} of policy {}", message.event, message.policy);
        if post(
            url.expose_secret(),
            Some(&message.body(&notify.webhook_format)),
            &what,
        )
        .await
        {
            tracing::info!("sent {what}");
        }
    }
    if let Some(email) = &notify.email {
        let what = format!("email for {} of policy {}", message.event, message.policy);
        if email::send(email, message, &what).await {
            tracing::info!("sent {what}");
        }
    }
}

/// The health-check URL of one job: `healthcheck` for backups, `healthcheck_verify` and
/// `healthcheck_prune` for the others, so that a passing verify never marks a failing
/// backup's check "up".
fn healthcheck_of<'a>(policy: &'a Policy, job: &str) -> Option<&'a secrecy::SecretString> {
    let n = policy.notify.as_ref()?;
    match job {
        "backup" => n.healthcheck.as_ref(),
        "verify" => n.healthcheck_verify.as_ref(),
        "prune" => n.healthcheck_prune.as_ref(),
        _ => None,
    }
}

/// The health-check ping at a job's start.
pub async fn ping_start(policy: &Policy, job: &str) {
    if let Some(url) = healthcheck_of(policy, job) {
        let url = format!("{}/start", url.expose_secret().trim_end_matches('/'));
        post(
            &url,
            None,
            &format!("health-check start ping of policy {}", policy.name),
        )
        .await;
    }
}

/// The health-check ping at a job's end, with its record.
pub async fn ping_end(policy: &Policy, job: &str, ok: bool, record: &Value) {
    if let Some(url) = healthcheck_of(policy, job) {
        let base = url.expose_secret().trim_end_matches('/');
        let url = if ok {
            base.to_string()
        } else {
            format!("{base}/fail")
        };
        post(
            &url,
            Some(record),
            &format!("health-check ping of policy {}", policy.name),
        )
        .await;
    }
}

/// A change-stream event: logged, and sent where `[notify]` says (`stream_lag`,
/// `slot_dropped`; a sealed segment and a schema change are logged only).
pub async fn stream_event(policy: &Policy, event: &crate::ops::stream::Event) {
    use crate::ops::stream::Event;
    let human = crate::util::human_bytes;
    let (name, text) = match event {
        Event::Sealed(_) | Event::Held { .. } => return,
        Event::SchemaChanged(c) => {
            tracing::warn!(
                "stream of policy {}: table {} changed shape at {}: restores after it are refused until the next snapshot; take a backup",
                policy.name,
                c.table,
                c.commit_at.to_rfc3339()
            );
            return;
        }
        Event::LagCleared { bytes } => {
            tracing::info!(
                "stream of policy {}: the slot holds {} again, under max_slot_lag",
                policy.name,
                human((*bytes).max(0) as u64)
            );
            return;
        }
        Event::Lag { bytes, limit } => (
            "stream_lag",
            format!(
                "the slot holds {} of WAL on the primary, over max_slot_lag {}",
                human((*bytes).max(0) as u64),
                human(*limit)
            ),
        ),
        Event::SlotDropped { bytes, limit } => (
            "slot_dropped",
            format!(
                "the slot held {} of WAL, over drop_slot_at {}: it was dropped to protect the primary; run `backstop stream --setup` (the stream has a gap until the next backup)",
                human((*bytes).max(0) as u64),
                human(*limit)
            ),
        ),
    };
    tracing::warn!("stream of policy {}: {text}", policy.name);
    send_stream(policy, name, text).await;
}

/// The stream stopped for another reason than a signal, while its slot may still hold WAL.
pub async fn stream_stopped(policy: &Policy, why: &str) {
    tracing::error!("stream of policy {} stopped: {why}", policy.name);
    send_stream(policy, "stream_stopped", why.to_string()).await;
}

async fn send_stream(policy: &Policy, event: &str, text: String) {
    let Some(notify) = &policy.notify else { return };
    let message = Message {
        event: event.to_string(),
        policy: policy.name.clone(),
        job: "stream".into(),
        id: None,
        error: Some(text.clone()),
        figures: Vec::new(),
        record: json!({"kind": "stream", "policy": policy.name, "event": event, "error": text}),
    };
    send(notify, &message).await;
}

/// Everything a finished run sends: the events its outcome raises (given the previous run's
/// outcome of the same job) and the end ping.
pub async fn after_run(policy: &Policy, job: &str, record: &Value, previous_ok: Option<bool>) {
    let header: crate::record::Header = serde_json::from_value(record.clone()).unwrap_or_default();
    let ok = header.ok;
    ping_end(policy, job, ok, record).await;
    let Some(notify) = &policy.notify else { return };
    let rto_met = header.rto_met;
    let mut figures = vec![format!("duration {:.1}s", header.duration_s)];
    if let Some(r) = header.restore_s {
        figures.push(format!(
            "restore {r:.1}s (RTO {:.0}s)",
            policy.objectives.rto.as_secs_f64()
        ));
    }
    for event in events_after_run(job, ok, previous_ok, rto_met) {
        let message = Message {
            event: event.to_string(),
            policy: policy.name.clone(),
            job: job.to_string(),
            id: header.snapshot_id.clone(),
            error: header.error.clone(),
            figures: figures.clone(),
            record: record.clone(),
        };
        send(notify, &message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_alert_once_and_recovery_once() {
        assert_eq!(
            events_after_run("backup", false, Some(true), None),
            vec!["failure"]
        );
        assert_eq!(
            events_after_run("backup", false, None, None),
            vec!["failure"]
        );
        assert!(events_after_run("backup", false, Some(false), None).is_empty());
        assert_eq!(
            events_after_run("backup", true, Some(false), None),
            vec!["recovered", "success"]
        );
        assert_eq!(
            events_after_run("backup", true, Some(true), None),
            vec!["success"]
        );
        assert_eq!(
            events_after_run("verify", false, Some(true), None),
            vec!["verify_failure"]
        );
        assert_eq!(
            events_after_run("verify", true, Some(true), Some(false)),
            vec!["success", "rto_breach"]
        );
    }

    #[test]
    fn a_new_policy_is_not_in_breach_before_its_first_backup_is_due() {
        let rpo = Duration::from_secs(3600);
        let start = Utc::now();
        let mut w = RpoWatch::default();
        assert_eq!(w.observe_at(None, start, rpo), None);
        let later = start + chrono::Duration::minutes(59);
        assert_eq!(w.observe_at(None, later, rpo), None);
        let first = later + chrono::Duration::seconds(30);
        assert_eq!(w.observe_at(Some(first), first, rpo), None);
        let never = start + chrono::Duration::minutes(61);
        let mut w = RpoWatch::default();
        w.observe_at(None, start, rpo);
        assert_eq!(w.observe_at(None, never, rpo), Some("rpo_breach"));
    }

    #[test]
    fn rpo_breach_and_recovery_are_edges() {
        let rpo = Duration::from_secs(10);
        let mut w = RpoWatch::default();
        assert_eq!(w.observe(Some(Duration::from_secs(5)), rpo), None);
        assert_eq!(
            w.observe(Some(Duration::from_secs(11)), rpo),
            Some("rpo_breach")
        );
        assert_eq!(w.observe(Some(Duration::from_secs(20)), rpo), None);
        assert_eq!(
            w.observe(Some(Duration::from_secs(1)), rpo),
            Some("rpo_recovered")
        );
        assert_eq!(w.observe(Some(Duration::from_secs(2)), rpo), None);
    }
}
