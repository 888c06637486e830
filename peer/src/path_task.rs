//! The task that drives one call's [`crate::path::PathTable`] through the
//! [`Router`]: sends its probes, follows its switches (the `path_changed`
//! event), nudges quinn after each, and ends the call when it gives up.
//!
//! It starts when the server introduces the call (before the handshake:
//! the probes are the punches), gets the connection once the handshake is
//! done ([`PathHandle::attach`]), switches the probe key to one exported
//! from that connection, and ends with the connection. The call's current
//! path is published in a `watch` ([`PathStatus`]), which [`crate::Call`]
//! reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::probe::{export_context, EXPORT_LABEL};
use tokio::sync::{broadcast, oneshot, watch};
use tracing::debug;

use crate::call::CallPaths;
use common::probe::Probe;

use crate::path::{
    Action, Announced, BirthdayStats, Path, PathConfig, PathStatus, Route, SwitchReason,
};
use crate::router::{CallSpec, Polled, Router};
use crate::udp::PathSocket;
use crate::Event;

/// The setup code's handle on a call's path task. Clones share the task;
/// when every clone is gone before [`PathHandle::attach`], the task ends
/// (the call was given up).
#[derive(Debug, Clone)]
pub(crate) struct PathHandle {
    /// The address quinn dials or sees for this call.
    pub(crate) virtual_addr: SocketAddr,
    conn: Arc<std::sync::Mutex<Option<oneshot::Sender<quinn::Connection>>>>,
    /// The call's path.
    pub(crate) status: watch::Receiver<PathStatus>,
    /// The path last reported ([`crate::Call::connected_event`] sets it).
    pub(crate) announced: Announced,
}

impl PathHandle {
    /// What the call keeps of its paths, once `settled` is known.
    pub(crate) fn call_paths(&self, router: &Arc<Router>, settled: PathStatus) -> CallPaths {
        CallPaths {
            status: self.status.clone(),
            announced: self.announced.clone(),
            settled,
            release: Some((router.clone(), self.virtual_addr)),
        }
    }

    /// Whether `addr` (as quinn reports a connection's remote) is this
    /// call's virtual address.
    pub(crate) fn virtual_addr_is(&self, addr: SocketAddr) -> bool {
        common::candidates::canonical(addr) == common::candidates::canonical(self.virtual_addr)
    }

    /// Hands the task the call's connection (the handshake is done).
    pub(crate) fn attach(&self, conn: quinn::Connection) {
        let tx = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(conn);
        }
    }

    /// The path once the handshake is done: the chosen one, or — when no
    /// probe has come back yet — wait up to `wait` for the choice, then
    /// take the path the handshake's last packet came over.
    pub(crate) async fn settled(&mut self, router: &Router, wait: Duration) -> PathStatus {
        let chosen =
            tokio::time::timeout(wait, self.status.wait_for(|s| *s != PathStatus::Pending)).await;
        if let Ok(Ok(status)) = chosen {
            return *status;
        }
        match router.path(self.virtual_addr) {
            Some((_, Some(Route::Direct(a)))) => PathStatus::On(Path::Direct, a),
            Some((_, Some(Route::Relay))) => router
                .relay_addr(self.virtual_addr)
                .map_or(PathStatus::Pending, |a| PathStatus::On(Path::Relay, a)),
            _ => PathStatus::Pending,
        }
    }
}

/// What the task needs besides the call.
pub(crate) struct TaskContext {
    pub(crate) router: Arc<Router>,
    pub(crate) socket: Arc<PathSocket>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) config: PathConfig,
}

/// Registers `spec` with the router and starts its task. `peer` is the
/// other side's name (for events); without a connection within
/// `setup_within` (the caller's timeout, the callee's accept window) the
/// call's paths are dropped.
pub(crate) fn start(
    ctx: &TaskContext,
    spec: CallSpec,
    peer: String,
    setup_within: Duration,
) -> PathHandle {
    let call_id = spec.call_id;
    let (virtual_addr, wake) = ctx
        .router
        .register(spec, ctx.config.clone(), Instant::now());
    let (conn_tx, conn_rx) = oneshot::channel();
    let (status_tx, status) = watch::channel(PathStatus::Pending);
    let announced = Announced::default();
    let task = Task {
        router: ctx.router.clone(),
        socket: ctx.socket.clone(),
        events: ctx.events.clone(),
        virtual_addr,
        call_id,
        peer,
        status: status_tx,
        announced: announced.clone(),
        conn: None,
        relayed_notice: false,
        extra: 0,
    };
    tokio::spawn(task.run(wake, conn_rx, setup_within.min(MAX_SETUP)));
    PathHandle {
        virtual_addr,
        conn: Arc::new(std::sync::Mutex::new(Some(conn_tx))),
        status,
        announced,
    }
}

struct Task {
    router: Arc<Router>,
    socket: Arc<PathSocket>,
    events: broadcast::Sender<Event>,
    virtual_addr: SocketAddr,
    call_id: u64,
    peer: String,
    status: watch::Sender<PathStatus>,
    announced: Announced,
    conn: Option<quinn::Connection>,
    relayed_notice: bool,
    /// Extra sockets opened by the running birthday attempt.
    extra: usize,
}

/// The longest a call may wait for its connection before its paths are
/// dropped.
const MAX_SETUP: Duration = Duration::from_secs(60);

/// How long a call's routes outlive its connection, so the
/// CONNECTION_CLOSE (sent by quinn's driver after `closed()` resolves) and
/// its retransmissions still find their path.
const LINGER: Duration = Duration::from_secs(2);

impl Task {
    async fn run(
        mut self,
        wake: Arc<tokio::sync::Notify>,
        conn_rx: oneshot::Receiver<quinn::Connection>,
        setup_within: Duration,
    ) {
        let mut conn_rx = Some(conn_rx);
        let setup_deadline = tokio::time::Instant::now() + setup_within;
        while let Some(next) = self.drain() {
            let sleep = next.map_or(setup_deadline, tokio::time::Instant::from_std);
            let conn = self.conn.clone();
            tokio::select! {
                () = tokio::time::sleep_until(sleep) => {
                    if self.conn.is_none() && tokio::time::Instant::now() >= setup_deadline {
                        break;
                    }
                }
                () = wake.notified() => {}
                got = async { conn_rx.as_mut().expect("guarded").await }, if conn_rx.is_some() => {
                    conn_rx = None;
                    match got {
                        Ok(c) => self.attach(c),
                        // The setup gave up on the call.
                        Err(_) => break,
                    }
                }
                _ = async { conn.as_ref().expect("guarded").closed().await }, if conn.is_some() => break,
            }
        }
        self.router.closing(self.virtual_addr);
        if self.conn.take().is_some() {
            tokio::time::sleep(LINGER).await;
        }
        // After the close had its way through the relay: the relay may
        // forget the call now.
        if let Some((relay, frame)) = self.router.end_frame(self.virtual_addr) {
            self.socket.send_raw(relay, &frame);
        }
        let extra = self.router.drop_extra(self.virtual_addr, false);
        self.socket.close_extra(&extra);
        self.router.remove(self.virtual_addr);
    }

    fn attach(&mut self, conn: quinn::Connection) {
        let mut key = [0u8; 32];
        match conn.export_keying_material(&mut key, EXPORT_LABEL, &export_context(self.call_id)) {
            Ok(()) => self
                .router
                .connected(self.virtual_addr, key, Instant::now()),
            Err(e) => debug!("no keying material exported: {e:?}"),
        }
        self.conn = Some(conn);
    }

    /// Does everything the table wants now; `None` when the call is over,
    /// else when to look again.
    fn drain(&mut self) -> Option<Option<Instant>> {
        loop {
            match self.router.poll(self.virtual_addr, Instant::now()) {
                Polled::Send(out) => self.socket.send_raw_via(out.via, out.to, out.bytes()),
                Polled::Action(Action::Switch { to, reason }) => self.switched(to, reason),
                Polled::Action(Action::OpenSockets { count, to, ping }) => {
                    self.open_sockets(count, to, ping)
                }
                Polled::Action(Action::BirthdayEnded { stats }) => self.birthday_ended(stats),
                Polled::Action(Action::Nudge) => self.nudge(),
                Polled::Action(Action::GiveUp { reason }) => {
                    debug!(peer = %self.peer, ?reason, "no path left");
                    self.status.send_replace(PathStatus::GaveUp(reason));
                    if let Some(c) = &self.conn {
                        c.close(common::error::close::DONE.into(), b"no path to the peer");
                    }
                    return None;
                }
                Polled::Action(_) => {}
                Polled::Idle(next) => return Some(next),
                Polled::Gone => return None,
            }
        }
    }

    fn switched(&mut self, to: Route, reason: SwitchReason) {
        let status = match to {
            Route::Direct(a) => PathStatus::On(Path::Direct, a),
            Route::Relay => match self.router.relay_addr(self.virtual_addr) {
                Some(a) => PathStatus::On(Path::Relay, a),
                None => return,
            },
        };
        self.status.send_replace(status);
        let PathStatus::On(path, addr) = status else {
            return;
        };
        if path == Path::Relay && !self.relayed_notice {
            self.relayed_notice = true;
            let _ = self.events.send(Event::Notice {
                message: format!(
                    "the call with {} goes through the relay at {addr}: it depends on the server staying up",
                    self.peer
                ),
            });
        }
        // Reported only after `connected`, and only for a real change (a
        // move before `connected` is in what `connected` says).
        let changed = {
            let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
            match *announced {
                Some(before) if before != status => {
                    *announced = Some(status);
                    true
                }
                _ => false,
            }
        };
        if changed {
            let _ = self.events.send(Event::PathChanged {
                peer: self.peer.clone(),
                path: path.as_str().to_owned(),
                remote_addr: common::candidates::canonical(addr).to_string(),
                reason: reason_str(reason).to_owned(),
            });
        }
    }

    /// A birthday attempt's hard side: opens the sockets, gives them to the
    /// call, and sends one ping from each toward the other side.
    fn open_sockets(&mut self, count: usize, to: SocketAddr, ping: common::probe::Ping) {
        let Some(bytes) = self.router.seal(self.virtual_addr, &Probe::Ping(ping)) else {
            return;
        };
        let ids = self.socket.open_extra(count, to, &bytes);
        self.router.add_extra(self.virtual_addr, &ids);
        self.extra = ids.len();
        debug!(peer = %self.peer, sockets = ids.len(), %to, "birthday: sockets open");
    }

    /// A birthday attempt ended: its sockets close (the winner's stays
    /// with the call), and the user hears of it.
    fn birthday_ended(&mut self, stats: BirthdayStats) {
        let closing = self.router.drop_extra(self.virtual_addr, stats.direct);
        self.socket.close_extra(&closing);
        let sockets = u32::try_from(self.extra).unwrap_or(u32::MAX);
        self.extra = 0;
        debug!(peer = %self.peer, ?stats, closed = closing.len(), "birthday attempt over");
        let _ = self.events.send(Event::Birthday {
            peer: self.peer.clone(),
            outcome: if stats.direct { "direct" } else { "relay" }.to_owned(),
            role: stats.role.as_str().to_owned(),
            probes: stats.probes,
            sockets: if stats.sockets > 0 { sockets } else { 0 },
            elapsed_ms: stats.elapsed.as_secs_f64() * 1000.0,
        });
    }

    /// Makes quinn send at once on the new path: a tiny datagram (the
    /// other side drops it), so loss recovery restarts now, not after a
    /// retransmission timeout that knows nothing of the switch.
    fn nudge(&self) {
        if let Some(c) = &self.conn {
            let _ = c.send_datagram(bytes::Bytes::from_static(&[0]));
        }
    }
}

fn reason_str(reason: SwitchReason) -> &'static str {
    match reason {
        SwitchReason::First => "first",
        SwitchReason::Upgrade => "upgrade",
        SwitchReason::LowerRtt => "lower_rtt",
        SwitchReason::Failed => "failed",
        SwitchReason::Birthday => "birthday",
    }
}
