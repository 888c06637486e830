//! The race's timing with stand-in attempts (no network): the futures
//! below are the network, resolving when a real one would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::*;

const AFTER: Duration = Duration::from_millis(200);

fn unreachable(why: &str) -> Error {
    Error::ServerUnreachable {
        server: "s".into(),
        reason: why.into(),
    }
}

/// An attempt that succeeds with `v` after `d`.
fn after_ok<'a, T: Send + 'a>(d: Duration, v: T) -> Boxed<'a, T> {
    Box::pin(async move {
        tokio::time::sleep(d).await;
        Ok(v)
    })
}

fn never<'a, T: 'a>() -> Boxed<'a, T> {
    Box::pin(std::future::pending())
}

/// Sets its flag when dropped (the attempt was given up).
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn udp_blocked_falls_back_to_tcp_just_after_the_delay() {
    let start = Instant::now();
    let opened_at = Arc::new(std::sync::Mutex::new(None));
    let at = opened_at.clone();
    let mut tcp_error = None;
    let (c, transport) = race(
        never(),
        AFTER,
        move || {
            *at.lock().expect("lock") = Some(start.elapsed());
            after_ok(Duration::from_millis(20), "tunnel")
        },
        |t| {
            assert_eq!(t, "tunnel");
            after_ok(Duration::from_millis(20), "over tcp")
        },
        &mut tcp_error,
    )
    .await
    .expect("connected");
    assert_eq!((c, transport), ("over tcp", Transport::Tcp));
    let opened = opened_at.lock().expect("lock").expect("opened");
    assert!(
        opened >= AFTER,
        "the tunnel opened before the delay: {opened:?}"
    );
    let took = start.elapsed();
    assert!(took < AFTER + Duration::from_millis(400), "{took:?}");
}

#[tokio::test]
async fn udp_in_time_never_opens_the_tunnel() {
    let mut tcp_error = None;
    let (c, transport) = race(
        after_ok(Duration::from_millis(30), "over udp"),
        AFTER,
        || -> Boxed<'_, ()> { panic!("the tunnel must not be opened") },
        |_| never(),
        &mut tcp_error,
    )
    .await
    .expect("connected");
    assert_eq!((c, transport), ("over udp", Transport::Udp));
}

#[tokio::test]
async fn udp_completing_while_the_tunnel_opens_drops_the_tunnel_attempt() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let installed = Arc::new(AtomicBool::new(false));
    let inst = installed.clone();
    let mut tcp_error = None;
    let (c, transport) = race(
        after_ok(AFTER + Duration::from_millis(50), "over udp"),
        AFTER,
        move || -> Boxed<'static, ()> {
            Box::pin(async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
        },
        move |_| {
            inst.store(true, Ordering::SeqCst);
            never()
        },
        &mut tcp_error,
    )
    .await
    .expect("connected");
    assert_eq!((c, transport), ("over udp", Transport::Udp));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the tunnel attempt lives on"
    );
    assert!(!installed.load(Ordering::SeqCst));
}

#[tokio::test]
async fn installing_the_tunnel_gives_the_first_attempt_up() {
    let mut tcp_error = None;
    let first_dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(first_dropped.clone());
    let first: Boxed<'_, &str> = Box::pin(async move {
        let _flag = flag;
        tokio::time::sleep(AFTER + Duration::from_millis(100)).await;
        Ok("first")
    });
    let (c, transport) = race(
        first,
        AFTER,
        || after_ok(Duration::from_millis(10), ()),
        |()| after_ok(Duration::from_millis(300), "fresh"),
        &mut tcp_error,
    )
    .await
    .expect("connected");
    assert_eq!((c, transport), ("fresh", Transport::Tcp));
    assert!(first_dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_udp_failure_opens_the_tunnel_at_once() {
    let start = Instant::now();
    let mut tcp_error = None;
    let (_, transport) = race(
        Box::pin(async { Err(unreachable("refused")) }),
        Duration::from_secs(10),
        || after_ok(Duration::ZERO, ()),
        |()| after_ok(Duration::ZERO, ()),
        &mut tcp_error,
    )
    .await
    .expect("connected");
    assert_eq!(transport, Transport::Tcp);
    assert!(start.elapsed() < Duration::from_secs(1));
}

fn wrong_key() -> Error {
    Error::BadServerFingerprint {
        server: "s".into(),
        expected: "x".into(),
    }
}

#[tokio::test]
async fn a_wrong_key_ends_the_race_but_over_tcp_only_once_udp_failed_too() {
    // Over UDP: the server is there with another key; nothing else helps.
    let mut tcp_error = None;
    let e = race::<(), ()>(
        Box::pin(async { Err(wrong_key()) }),
        AFTER,
        || never(),
        |()| never(),
        &mut tcp_error,
    )
    .await
    .expect_err("a wrong key");
    assert!(matches!(e, Error::BadServerFingerprint { .. }), "{e:?}");

    // Over TCP while UDP still tries (a proxy inspecting TLS shows its own
    // key): UDP may still work…
    let (c, transport) = race::<u8, ()>(
        after_ok(AFTER, 7),
        Duration::ZERO,
        || Box::pin(async { Err(wrong_key()) }),
        |()| never(),
        &mut tcp_error,
    )
    .await
    .expect("UDP still wins");
    assert_eq!((c, transport), (7, Transport::Udp));
    // …and the wrong key is the answer when it does not.
    let e = race::<(), ()>(
        Box::pin(async {
            tokio::time::sleep(AFTER).await;
            Err(unreachable("no answer"))
        }),
        Duration::ZERO,
        || Box::pin(async { Err(wrong_key()) }),
        |()| never(),
        &mut tcp_error,
    )
    .await
    .expect_err("both failed");
    assert!(matches!(e, Error::BadServerFingerprint { .. }), "{e:?}");
}

#[tokio::test]
async fn when_both_fail_both_failures_are_named() {
    let mut tcp_error = None;
    let e = race::<(), ()>(
        Box::pin(async { Err(unreachable("no answer")) }),
        AFTER,
        || Box::pin(async { Err(unreachable("connection refused")) }),
        |()| never(),
        &mut tcp_error,
    )
    .await
    .expect_err("both failed");
    let text = e.to_string();
    assert!(
        text.contains("no answer") && text.contains("over TCP") && text.contains("refused"),
        "{text}"
    );
}
