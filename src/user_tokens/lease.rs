//! The cross-replica half of "one refresh per user at a time": a lease in the
//! vault row (owner, a random fencing id, expiry).
//!
//! - The holder keeps its lease alive with a heartbeat while it works (the IdP
//!   call, and however long storing the IdP's answer takes), so a slow IdP or a
//!   slow database never lets a second replica in while the holder lives.
//! - A refresher's write lands only while the row still carries its lease id.
//! - Another replica takes a lease over only when it has lapsed **and** it saw
//!   the lease stay untouched for [`takeover_window`] of its own successful
//!   reads. A holder that is alive touches its lease within that window as soon
//!   as the database answers again (heartbeat or write), so after an outage the
//!   holder stores its answer instead of a second replica replaying the old
//!   refresh token. A holder that died is replaced after `lease` + window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::domain::{AppId, UserId};
use crate::vault::{Lease, LeaseTake, Vault};

/// A holder retries a failed heartbeat at least this often.
const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);

/// How often a live holder extends its lease.
pub(super) fn heartbeat_every(lease: Duration) -> Duration {
    lease / 4
}

/// How long a lapsed lease must stay unchanged before another replica takes it.
pub(super) fn takeover_window(lease: Duration) -> Duration {
    (lease / 2).max(HEARTBEAT_RETRY * 2)
}

/// Keeps a lease alive until dropped.
#[derive(Debug)]
pub(super) struct LeaseKeeper {
    task: JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl LeaseKeeper {
    pub(super) fn start(
        vault: Vault,
        app: AppId,
        user: UserId,
        lease_id: String,
        lease: Duration,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let every = heartbeat_every(lease);
            let mut delay = every;
            loop {
                tokio::time::sleep(delay).await;
                let until = crate::time::now() + lease.as_secs() as i64;
                match vault.extend_lease(&app, &user, &lease_id, until).await {
                    Ok(true) => delay = every,
                    Ok(false) => {
                        // A newer sign-in or a sign-out ended it; the write will say.
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(user = %user, error = %e, "cannot extend the refresh lease; retrying");
                        delay = every.min(HEARTBEAT_RETRY);
                    }
                }
            }
        });
        Self { task, lost }
    }

    /// The row no longer carries the lease.
    pub(super) fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a waiting replica saw of somebody else's lapsed lease.
#[derive(Debug, Default)]
pub(super) struct Watch {
    seen: Option<(Lease, Instant)>,
}

impl Watch {
    /// Given the lease as just read (successfully) and the time, the lease to
    /// take, if any: a free one at once, a lapsed one once it has stayed the
    /// same for `window`. A live lease means waiting.
    pub(super) fn take(
        &mut self,
        lease: Option<&Lease>,
        now: i64,
        window: Duration,
    ) -> Option<LeaseTake> {
        let Some(lease) = lease else {
            self.seen = None;
            return Some(LeaseTake::Free);
        };
        if lease.until >= now {
            self.seen = None;
            return None;
        }
        match &self.seen {
            Some((seen, since)) if seen == lease => {
                (since.elapsed() >= window).then(|| LeaseTake::Stale {
                    id: lease.id.clone(),
                    until: lease.until,
                })
            }
            _ => {
                self.seen = Some((lease.clone(), Instant::now()));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, until: i64) -> Lease {
        Lease {
            owner: Some("replica-a".into()),
            id: id.into(),
            until,
        }
    }

    #[test]
    fn a_free_lease_is_taken_at_once_and_a_live_one_never() {
        let mut w = Watch::default();
        assert_eq!(w.take(None, 100, Duration::ZERO), Some(LeaseTake::Free));
        assert_eq!(w.take(Some(&lease("a", 100)), 100, Duration::ZERO), None);
        assert_eq!(w.take(Some(&lease("a", 150)), 100, Duration::ZERO), None);
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_taken_only_after_it_stayed_the_same_for_the_window() {
        let window = Duration::from_millis(200);
        let mut w = Watch::default();
        assert_eq!(w.take(Some(&lease("a", 90)), 100, window), None);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(w.take(Some(&lease("a", 90)), 100, window), None);
        // The holder came back and extended it (still lapsed by our clock):
        // the watch starts over.
        assert_eq!(w.take(Some(&lease("a", 95)), 100, window), None);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(w.take(Some(&lease("a", 95)), 100, window), None);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            w.take(Some(&lease("a", 95)), 100, window),
            Some(LeaseTake::Stale {
                id: "a".into(),
                until: 95
            })
        );
    }

    #[test]
    fn the_window_leaves_a_live_holder_time_to_touch_its_lease() {
        for secs in [3, 30, 300] {
            let lease = Duration::from_secs(secs);
            assert!(takeover_window(lease) > heartbeat_every(lease));
            assert!(takeover_window(lease) > HEARTBEAT_RETRY);
        }
    }
}
