//! The process's signals: SIGHUP reloads, Ctrl-C and SIGTERM stop, SIGUSR1/2 are ignored.

use tokio::sync::mpsc;

/// A message at every SIGHUP (none on other platforms). Installing the handler stops
/// SIGHUP from ending the process, so call it before anything else. Hang-ups that arrive
/// while a reload is still to begin are one reload.
pub fn hangups() -> std::io::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::debug!("SIGHUP: reloading the configuration");
                if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    break;
                }
            }
        });
    }
    // Elsewhere the sender is dropped: `serve_reloading` then never reloads.
    #[cfg(not(unix))]
    drop(tx);
    Ok(rx)
}

/// Logs and ignores SIGUSR1 and SIGUSR2 (whose default action ends the process at once,
/// without stopping cleanly): they mean nothing to prescale, and a stray one (a log tool,
/// a mistaken `kill -USR1`) must not stop it. Call it before anything else.
pub fn ignore_user_signals() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, name) in [
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
        ] {
            let mut s = signal(kind)?;
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    tracing::warn!(
                        signal = name,
                        "signal ignored: it means nothing to prescale"
                    );
                }
            });
        }
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
