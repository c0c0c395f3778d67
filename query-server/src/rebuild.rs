//! Rebuilding the read model from position 0 without downtime.
//!
//! A second projector fills a fresh file (`<path>.rebuild-<millis>`) from the
//! stream while the live one keeps serving. When it is close to the live
//! checkpoint, the live projector stops (queries go on reading its file),
//! the new one catches the last events up to where the live one stopped,
//! and the new file is renamed over the live path ([`ReadModel::swap_in`]);
//! reads never wait for it, they only change files between two reads. The
//! live projector then resumes on the new file. Positions reported never go
//! backwards, but for a read model stopped on a rewritten log: the rebuild
//! then follows the log as it is now, up to its head, and replaces the
//! history the server reports.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use hotel_common::pb;
use tokio::sync::{Mutex, watch};

use crate::{
    projector::{CommandServerChannel, LOG_REWRITTEN, Projection, ProjectorHandle},
    queries::QueryError,
    read_model::{ReadModel, Writer, with_suffix},
};

/// The rebuild stops the live projector when it is this close behind it.
const HAND_OVER_DISTANCE: i64 = 1_000;
/// Longest pause of the live projector while the rebuild catches the rest.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The live projector, which a rebuild stops and restarts.
pub type LiveProjector = Arc<Mutex<Option<ProjectorHandle>>>;

/// Runs rebuilds, one at a time.
pub struct Rebuilder {
    /// Connection to the command server, shared with the live projector.
    channel: CommandServerChannel,
    /// The live file and its readers.
    read_model: Arc<ReadModel>,
    /// The live projection (checkpoint, status).
    projection: Arc<Projection>,
    /// The live projector.
    live: LiveProjector,
    /// Held while a rebuild runs.
    running: Mutex<()>,
    /// Turns true when the server shuts down; a rebuild is abandoned then.
    stopping: watch::Receiver<bool>,
}

impl Rebuilder {
    pub fn new(
        channel: CommandServerChannel,
        read_model: Arc<ReadModel>,
        projection: Arc<Projection>,
        live: LiveProjector,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            channel,
            read_model,
            projection,
            live,
            running: Mutex::new(()),
            stopping,
        }
    }

    /// Rebuilds and swaps in the new file; returns where it stands.
    pub async fn rebuild(&self) -> Result<pb::RebuildReadModelResponse, QueryError> {
        let Ok(_running) = self.running.try_lock() else {
            return Err(QueryError::Busy("a rebuild is already running".into()));
        };
        let path = with_suffix(
            self.read_model.path(),
            &format!(".rebuild-{}", crate::read_model::now_millis()),
        );
        tracing::info!(path = %path.display(), "rebuilding the read model");
        let result = self.rebuild_into(&path).await;
        if result.is_err() {
            remove_files(&path);
        }
        let checkpoint = result?;
        tracing::info!(checkpoint, "rebuilt read model swapped in");
        Ok(pb::RebuildReadModelResponse {
            checkpoint,
            events_replayed: checkpoint,
        })
    }

    async fn rebuild_into(&self, path: &std::path::Path) -> Result<i64, QueryError> {
        let owned = path.to_owned();
        let mut writer = tokio::task::spawn_blocking(move || Writer::open(&owned))
            .await
            .context("opening the rebuild file")??;
        self.read_model
            .configure(&mut writer)
            .map_err(anyhow::Error::from)?;
        let shadow = Arc::new(Projection::new(
            writer.checkpoint().map_err(anyhow::Error::from)?,
            None,
        ));
        let rebuild = ProjectorHandle::spawn(self.channel.clone(), writer, shadow.clone());

        // A read model stopped on a rewritten log holds another history:
        // the rebuild follows the log as it is now, to its head, and the
        // positions it reports may go back (ADR 0009).
        let rewritten = self
            .projection
            .report()
            .stopped
            .is_some_and(|stop| stop.reason == LOG_REWRITTEN);
        let mut progress = shadow.watch_checkpoint();
        let mut stopping = self.stopping.clone();
        if rewritten {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while shadow.state() != pb::ProjectionState::Live {
                let shutting_down = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopping.wait_for(|stop| *stop) => true,
                };
                if shutting_down {
                    let _ = rebuild.stop().await;
                    return Err(anyhow::anyhow!("the server is shutting down").into());
                }
            }
        }
        // Otherwise: follow the live checkpoint until close behind it.
        if !rewritten {
            loop {
                let target = self.projection.checkpoint() - HAND_OVER_DISTANCE;
                let shutting_down = tokio::select! {
                    _ = progress.wait_for(|position| *position >= target) => false,
                    _ = stopping.wait_for(|stop| *stop) => true,
                };
                if shutting_down {
                    let _ = rebuild.stop().await;
                    return Err(anyhow::anyhow!("the server is shutting down").into());
                }
                if shadow.checkpoint() >= self.projection.checkpoint() - HAND_OVER_DISTANCE {
                    break;
                }
            }
        }

        // Hand over: freeze the live file, let the rebuild reach it.
        let Some(live) = self.live.lock().await.take() else {
            let _ = rebuild.stop().await;
            return Err(anyhow::anyhow!("the live projector is not running").into());
        };
        let live_writer = live.stop().await?;
        // The rebuild must reach where the live file stopped, unless that
        // was another history.
        let frozen = if rewritten {
            shadow.checkpoint()
        } else {
            live_writer
                .checkpoint()
                .map_err(anyhow::Error::from)?
                .position
        };
        let reached = tokio::time::timeout(
            HAND_OVER_TIMEOUT,
            progress.wait_for(|position| *position >= frozen),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        let shutting_down = *stopping.borrow();
        let rebuilt = rebuild.stop().await?;
        if !reached || shutting_down {
            self.resume(live_writer).await;
            return Err(anyhow::anyhow!(
                "the rebuild did not reach position {frozen} within {HAND_OVER_TIMEOUT:?}"
            )
            .into());
        }

        // Swap, then resume the live projector on the new file.
        let read_model = self.read_model.clone();
        let swapped =
            tokio::task::spawn_blocking(move || read_model.swap_in(live_writer, rebuilt)).await;
        let writer = match swapped {
            Ok(Ok(writer)) => writer,
            Ok(Err(error)) => {
                // Whichever file is at the live path now is a whole read model.
                self.reopen_and_resume().await;
                return Err(error.context("swapping in the rebuilt read model").into());
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let checkpoint = writer.checkpoint().map_err(anyhow::Error::from)?;
        if rewritten {
            self.projection.replace_history(checkpoint.clone());
        } else {
            self.projection.adopt(checkpoint.clone());
        }
        self.resume(writer).await;
        Ok(checkpoint.position)
    }

    async fn resume(&self, writer: Writer) {
        let handle = ProjectorHandle::spawn(self.channel.clone(), writer, self.projection.clone());
        *self.live.lock().await = Some(handle);
    }

    async fn reopen_and_resume(&self) {
        let read_model = self.read_model.clone();
        let reopened = tokio::task::spawn_blocking(move || {
            let mut writer = Writer::open(read_model.path())?;
            read_model.configure(&mut writer)?;
            read_model.attach(&mut writer);
            anyhow::Ok(writer)
        });
        match reopened.await {
            Ok(Ok(writer)) => self.resume(writer).await,
            Ok(Err(error)) => tracing::error!(
                error = format!("{error:#}"),
                "cannot reopen the read model; the projection is stopped"
            ),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

/// Deletes a database file and its WAL companions, ignoring missing ones.
fn remove_files(path: &std::path::Path) {
    for file in [
        path.to_owned(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
    ] {
        if let Err(error) = std::fs::remove_file(&file)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %file.display(), %error, "could not remove a rebuild file");
        }
    }
}

/// Removes rebuild files left by a process that died during a rebuild.
pub fn remove_abandoned(live_path: &std::path::Path) {
    let Some(name) = live_path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let prefix = format!("{name}.rebuild-");
    let dir = match live_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_owned(),
        None => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        if file_name.to_str().is_some_and(|n| n.starts_with(&prefix)) {
            tracing::info!(file = %entry.path().display(), "removing an abandoned rebuild file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// With `--rebuild-on-rewrite`: whenever the live projection stops because
/// the log was rewritten (LOG_REWRITTEN), rebuilds the read model from
/// position 0 with the usual rebuild-and-swap. The old model keeps serving,
/// stopped and labelled with its `as_of_position`, until the new one is
/// swapped in. A rebuild that fails is tried again while the projection is
/// still stopped for that reason.
pub async fn rebuild_when_rewritten(
    rebuilder: Arc<Rebuilder>,
    mut stops: watch::Receiver<Option<String>>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = stops.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
        while rebuilder
            .projection
            .report()
            .stopped
            .is_some_and(|stop| stop.reason == LOG_REWRITTEN)
        {
            tracing::warn!(
                "the log was rewritten: rebuilding the read model from position 0 \
                 (--rebuild-on-rewrite); the old one answers until the swap"
            );
            match rebuilder.rebuild().await {
                Ok(done) => {
                    tracing::info!(
                        checkpoint = done.checkpoint,
                        "rebuilt after a rewritten log"
                    );
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, "the rebuild after a rewritten log failed; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(REBUILD_RETRY) => {}
                        _ = stopping.wait_for(|stopping| *stopping) => return,
                    }
                }
            }
        }
        stops.borrow_and_update();
    }
}

/// The pause before a failed automatic rebuild is tried again.
const REBUILD_RETRY: Duration = Duration::from_secs(5);
