//! Telling systemd how the server is doing (`sd_notify`), for `Type=notify` units: ready once
//! the apps are loaded and the listener bound, reloading around a SIGHUP, stopping at
//! shutdown. Without `NOTIFY_SOCKET` in the environment, nothing is sent.

use sd_notify::NotifyState;

/// The server serves.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload of every app began; [`ready`] follows when it has ended, whether it worked or
/// not (the old apps serve on if it did not).
pub fn reloading() {
    // systemd 253 and later want the time of the reload with it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The server is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {error}");
    }
}
