//! The behaviour every storage backend must show, run against SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use super::store::{Claimed, Finish, NewMessage, Store};
use super::{Op, Queued, State, Timestamp};

pub(super) fn message(n: usize, key: Option<&str>) -> NewMessage {
    let now = Timestamp::now();
    NewMessage {
        message_id: format!("<m{n}@test>"),
        idempotency_key: key.map(str::to_string),
        template: "welcome".into(),
        tags: vec!["onboarding".into()],
        envelope_from: None,
        recipients: vec!["a@example.test".into(), "b@example.test".into()],
        raw: format!("Message-ID: <m{n}@test>\r\nSubject: hi\r\n\r\nbody\r\n")
            .into_bytes()
            .into(),
        now,
        expires_at: now.plus(Duration::from_secs(3600)),
    }
}

fn finish(c: &Claimed, state: State, outcome: &'static str) -> Finish {
    Finish {
        id: c.id,
        attempt: c.attempt,
        state,
        recipients: c.recipients.clone(),
        next_attempt_at: Timestamp::now(),
        outcome,
        code: Some(250),
        reply: "250 ok".into(),
        now: Timestamp::now(),
    }
}

pub(super) async fn one_key_makes_one_message(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.enqueue(message(n, Some("signup-42"))).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    let originals: Vec<&Queued> = results.iter().filter(|q| !q.duplicate).collect();
    assert_eq!(originals.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .all(|q| q.id == originals[0].id && q.message_id == originals[0].message_id));
    assert_eq!(store.stats().await.unwrap().count(State::Queued), 1);
}

pub(super) async fn claims_lease_and_an_expired_lease_passes_to_another_worker(
    store: Arc<dyn Store>,
) {
    for n in 0..5 {
        store.enqueue(message(n, None)).await.unwrap();
    }
    let now = Timestamp::now();
    let lease = Duration::from_secs(30);
    let a = store.claim("a", 3, now, lease).await.unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|c| c.attempt == 1));
    assert_eq!(
        &*a[0].raw,
        b"Message-ID: <m0@test>\r\nSubject: hi\r\n\r\nbody\r\n"
    );
    let b = store.claim("b", 10, now, lease).await.unwrap();
    assert_eq!(b.len(), 2, "leased messages are not claimed twice");
    // Past a's lease, b takes a's messages; a's late finish changes nothing.
    let later = now.plus(Duration::from_secs(31));
    store
        .renew("b", &[b[0].id, b[1].id], later.plus(lease))
        .await
        .unwrap();
    let taken = store.claim("b", 10, later, lease).await.unwrap();
    let mut ids: Vec<i64> = taken.iter().map(|c| c.id).collect();
    ids.sort();
    assert_eq!(ids, a.iter().map(|c| c.id).collect::<Vec<_>>());
    assert!(taken.iter().all(|c| c.attempt == 2));
    store
        .finish("a", finish(&a[0], State::Sent, "sent"))
        .await
        .unwrap();
    let shown = store.show(a[0].id).await.unwrap().unwrap();
    assert_eq!(shown.summary.state, State::Sending);
    assert_eq!(shown.history.len(), 2, "{:?}", shown.history);
    assert_eq!(shown.history[0].outcome, "unknown");
    store
        .finish("b", finish(&taken[0], State::Sent, "sent"))
        .await
        .unwrap();
    let shown = store.show(taken[0].id).await.unwrap().unwrap();
    assert_eq!(shown.summary.state, State::Sent);
    assert_eq!(shown.headers[1], ("Subject".into(), "hi".into()));
}

pub(super) async fn claims_mix_new_and_due_retries(store: Arc<dyn Store>) {
    for n in 0..4 {
        store.enqueue(message(n, None)).await.unwrap();
    }
    let now = Timestamp::now();
    for c in store
        .claim("w", 4, now, Duration::from_secs(30))
        .await
        .unwrap()
    {
        store
            .finish("w", finish(&c, State::Deferred, "deferred"))
            .await
            .unwrap();
    }
    for n in 10..14 {
        store.enqueue(message(n, None)).await.unwrap();
    }
    let later = Timestamp::now().plus(Duration::from_millis(5));
    let batch = store
        .claim("w", 4, later, Duration::from_secs(30))
        .await
        .unwrap();
    let retries = batch.iter().filter(|c| c.attempt == 2).count();
    assert_eq!((batch.len(), retries), (4, 2), "half new, half retries");
}

pub(super) async fn operators_hold_release_retry_cancel_and_purge(store: Arc<dyn Store>) {
    let q = store.enqueue(message(1, None)).await.unwrap();
    let now = Timestamp::now();
    let day = Duration::from_secs(86400);
    assert_eq!(store.apply(Op::Hold, q.id, now, day).await.unwrap(), Ok(()));
    assert!(store.claim("w", 5, now, day).await.unwrap().is_empty());
    assert_eq!(
        store.apply(Op::Hold, q.id, now, day).await.unwrap(),
        Err(Some(State::Held))
    );
    assert_eq!(
        store.apply(Op::Release, q.id, now, day).await.unwrap(),
        Ok(())
    );
    let c = store.claim("w", 5, now, day).await.unwrap().remove(0);
    let mut f = finish(&c, State::Failed, "failed");
    f.recipients[0].state = "sent".into();
    f.recipients[1].state = "failed".into();
    store.finish("w", f).await.unwrap();
    assert_eq!(store.retry_failed(now, day).await.unwrap(), 1);
    let shown = store.show(q.id).await.unwrap().unwrap();
    assert_eq!(shown.summary.state, State::Queued);
    let states: Vec<&str> = shown.recipients.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(
        states,
        ["sent", "pending"],
        "only the failed recipient is retried"
    );
    assert_eq!(
        store.apply(Op::Cancel, q.id, now, day).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        store.apply(Op::Cancel, 999, now, day).await.unwrap(),
        Err(None)
    );
    assert_eq!(
        store.purge(now).await.unwrap(),
        0,
        "finished after the cutoff"
    );
    let later = Timestamp::now().plus(Duration::from_millis(1));
    assert_eq!(store.purge(later).await.unwrap(), 1);
    assert!(store.show(q.id).await.unwrap().is_none());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.states.len(), 7);
    assert!(stats.states.iter().all(|s| s.count == 0));
}

/// One `#[tokio::test]` per conformance check, for a backend `open()` makes.
macro_rules! conformance {
    ($open:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            use crate::queue::conformance as c;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_key_makes_one_message() {
                let (_guard, store) = $open;
                c::one_key_makes_one_message(store).await;
            }

            #[tokio::test]
            async fn claims_lease_and_an_expired_lease_passes_to_another_worker() {
                let (_guard, store) = $open;
                c::claims_lease_and_an_expired_lease_passes_to_another_worker(store).await;
            }

            #[tokio::test]
            async fn claims_mix_new_and_due_retries() {
                let (_guard, store) = $open;
                c::claims_mix_new_and_due_retries(store).await;
            }

            #[tokio::test]
            async fn operators_hold_release_retry_cancel_and_purge() {
                let (_guard, store) = $open;
                c::operators_hold_release_retry_cancel_and_purge(store).await;
            }
        }
    };
}
pub(crate) use conformance;
