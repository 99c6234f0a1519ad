//! One shutdown handle for every background task (the refresh scheduler,
//! OAuth state sync, rate-limit eviction, SIGHUP reload, the signal
//! handler): each is spawned through [`Background`], the server watches the
//! same [`Background::signal`], and [`Background::stop`] ends them all.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long stopped tasks get to finish before they are dropped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The process's background tasks and the one signal that stops them.
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Starts the shutdown; cheap to clone, for the signal handler.
#[derive(Clone)]
pub struct StopTrigger(watch::Sender<bool>);

impl StopTrigger {
    /// Asks every task (and the server) to stop; later calls do nothing.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl Background {
    pub fn new() -> Self {
        Background {
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
        }
    }

    /// Turns `true` when shutdown starts: for the server and tasks that
    /// finish their own work first.
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn trigger(&self) -> StopTrigger {
        StopTrigger(self.stop.clone())
    }

    /// Runs `task` until it returns or shutdown starts; then it is dropped
    /// at its next await point.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.signal();
        self.tasks.spawn(async move {
            tokio::select! {
                () = task => tracing::debug!(task = name, "background task ended"),
                _ = stop.wait_for(|s| *s) => tracing::debug!(task = name, "background task stopped"),
            }
        });
    }

    /// Stops every task and waits for them, at most [`STOP_GRACE`]; what is
    /// left then is aborted.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
            tracing::warn!("background tasks still running after the shutdown grace; aborted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn one_stop_ends_every_task_and_the_server_signal() {
        let mut bg = Background::new();
        let server = bg.signal();
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped.clone());
        bg.spawn("forever", async move {
            let _flag = flag;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
            }
        });
        bg.spawn("short", async {});
        let trigger = bg.trigger();
        bg.spawn("signal", async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            trigger.stop();
        });
        let mut server = server;
        server.wait_for(|s| *s).await.unwrap();
        let t0 = tokio::time::Instant::now();
        bg.stop().await;
        assert!(dropped.load(Ordering::SeqCst), "the endless task was ended");
        assert!(t0.elapsed() < STOP_GRACE, "without waiting for the grace");
    }
}
