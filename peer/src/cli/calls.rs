//! The one-shot commands: lookup, call, ping, send.

use std::path::Path;
use std::time::Duration;

use peer::{Call, Event, Peer, PeerMessage, Result};

use super::Out;
use crate::CallFlags;

pub(crate) async fn lookup(peer: &Peer, name: &str, out: Out) -> Result<()> {
    let info = peer.lookup(name).await?;
    let event = Event::Lookup {
        name: info.name,
        online: info.online,
        fingerprint: info.fingerprint.to_string(),
    };
    if out.json {
        out.event(&event);
    } else {
        println!("{}", event.human());
    }
    Ok(())
}

fn ended(call: &Call, sent: u64, received: u64) -> Event {
    Event::CallEnded {
        peer: call.peer.clone(),
        bytes_sent: sent,
        bytes_received: received,
    }
}

pub(crate) async fn call(peer: &Peer, name: &str, flags: &CallFlags, out: Out) -> Result<()> {
    let call = peer.call(name, flags.options()).await?;
    let (send, recv) = call.open(&PeerMessage::Pipe).await?;
    let (sent, received) = peer::stdio_pipe::pipe_stdio(send, recv).await?;
    out.event(&ended(&call, sent, received));
    call.close();
    Ok(())
}

pub(crate) async fn ping(
    peer: &Peer,
    name: &str,
    count: u64,
    interval: f64,
    flags: &CallFlags,
    out: Out,
) -> Result<()> {
    let call = peer.call(name, flags.options()).await?;
    let interval = crate::secs(interval);
    // CLI.md: each reply is waited for up to 10 s (a path switch may hold one).
    let timeout = Duration::from_secs(10).max(interval * 2);
    let answered = peer::app::ping(&call, count, interval, timeout, |seq, rtt| {
        let event = Event::Pong {
            peer: call.peer.clone(),
            seq,
            rtt_ms: rtt.as_secs_f64() * 1000.0,
            path: call.path().as_str().to_owned(),
            remote_addr: call.remote_addr().to_string(),
        };
        if out.json {
            out.event(&event);
        } else {
            println!("{} remote={}", event.human(), call.remote_addr());
        }
    })
    .await;
    call.close();
    let answered = answered?;
    if answered < count {
        return Err(peer::Error::Unreachable {
            name: name.to_owned(),
            tried: format!("{answered} of {count} pings answered"),
        });
    }
    Ok(())
}

pub(crate) async fn send(
    peer: &Peer,
    name: &str,
    file: &Path,
    flags: &CallFlags,
    out: Out,
) -> Result<()> {
    let (_, size) = peer::app::hash_file(file).await?;
    let call = peer.call(name, flags.options()).await?;
    let bar = (!out.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let result = peer::app::send_file(&call, file, |n| {
        if let Some(bar) = &bar {
            bar.set_position(n);
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let stored = result?;
    out.event(&ended(&call, size, 0));
    if !out.json {
        // `stored` is the receiver's words.
        let line = format!("sent {} ({size} bytes) to {name}: {stored}", file.display());
        eprintln!("{}", common::escape_for_terminal(&line));
    }
    call.close();
    Ok(())
}
