//! The template set in use, swapped whole when a reload succeeds: renders take the
//! set as it is when they start, and finish on it whatever happens meanwhile.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::broadcast;

use crate::error::Error;
use crate::templates::TemplateSet;

/// How many reload events a slow subscriber may fall behind before it misses some.
const EVENT_BUFFER: usize = 64;

/// What a reload did, as told to [`Mailer::subscribe`](crate::Mailer::subscribe)
/// receivers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReloadEvent {
    /// The changed set loaded cleanly and is now the one every new render uses.
    Reloaded {
        /// Counts successful reloads from 0, the set the mailer was built with.
        generation: u64,
        /// Files whose change triggered the reload.
        changed: Vec<PathBuf>,
    },
    /// The changed set has problems; the last good set stays in use. Every problem is
    /// in [`Error::problems`].
    Failed {
        /// What is wrong, with file and line where known.
        error: Arc<Error>,
        /// Files whose change triggered the reload.
        changed: Vec<PathBuf>,
    },
}

/// A template set that can be reloaded from its folders while in use.
pub(crate) struct LiveSet {
    set: ArcSwap<TemplateSet>,
    templates: PathBuf,
    schemas: PathBuf,
    compiled: usize,
    events: broadcast::Sender<ReloadEvent>,
    last_error: ArcSwapOption<Error>,
    generation: AtomicU64,
}

impl LiveSet {
    /// `compiled`: how many schema validators a full reload keeps compiled.
    pub(crate) fn new(
        set: TemplateSet,
        templates: &Path,
        schemas: &Path,
        compiled: usize,
    ) -> LiveSet {
        LiveSet {
            set: ArcSwap::from_pointee(set),
            templates: templates.to_path_buf(),
            schemas: schemas.to_path_buf(),
            compiled,
            events: broadcast::channel(EVENT_BUFFER).0,
            last_error: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
        }
    }

    /// The set in use now.
    pub(crate) fn current(&self) -> Arc<TemplateSet> {
        self.set.load_full()
    }

    /// Records why the set on disk did not load when the mailer was built.
    pub(crate) fn broken_at_start(&self, error: Error) {
        for problem in error.problems() {
            let at = problem
                .location()
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::error!(%at, problem = problem.message(), "templates do not load yet");
        }
        self.last_error.store(Some(Arc::new(error)));
    }

    /// Loads what changed (the whole set when a shared file changed); swaps it in if
    /// clean, otherwise keeps the old one and reports every problem.
    pub(crate) fn reload(&self, changed: Vec<PathBuf>) {
        let _span = tracing::info_span!("reload", changed = changed.len()).entered();
        // After a failed reload the set in use is older than the files on disk, so
        // only a full load can tell whether everything is fixed.
        let result = if self.last_error.load().is_some() {
            TemplateSet::load(&self.templates, &self.schemas, self.compiled)
        } else {
            self.set.load().reload(&changed)
        };
        let event = match result {
            Ok(set) => {
                self.set.store(Arc::new(set));
                self.last_error.store(None);
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(generation, "templates reloaded");
                ReloadEvent::Reloaded {
                    generation,
                    changed,
                }
            }
            Err(error) => {
                for problem in error.problems() {
                    let at = problem
                        .location()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    tracing::error!(%at, problem = problem.message(), "reload failed; keeping the last good templates");
                }
                let error = Arc::new(error);
                self.last_error.store(Some(error.clone()));
                ReloadEvent::Failed { error, changed }
            }
        };
        // No subscribers is normal: nobody is previewing.
        let _ = self.events.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.events.subscribe()
    }

    pub(crate) fn last_error(&self) -> Option<Arc<Error>> {
        self.last_error.load_full()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
