//! Hot reload: watch the template and schema folders, reload the whole set on a save,
//! and swap it in only when it loads cleanly.
//!
//! Folders are watched rather than files because editors rarely write a file in
//! place: they write a temporary file and rename it over the old one, or (vim) move
//! the old one aside first. Watching the folder sees every one of those dances as
//! events on the file's name, which is all a reload needs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{
    new_debouncer_opt, DebounceEventHandler, DebounceEventResult, FileIdCache, NoCache,
    RecommendedCache,
};
use tokio::sync::broadcast;

use crate::error::{Error, ErrorKind, Result};
use crate::mailer::{Inner, Mailer};
use crate::templates::walk::is_editor_litter;
use crate::templates::TemplateSet;

/// How long a burst of events must stay quiet before a reload. Editors finish a save
/// within a few milliseconds; this keeps a save to one reload and well inside the
/// 500 ms budget from save to next render.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How many reload events a slow subscriber may fall behind before it misses some.
const EVENT_BUFFER: usize = 64;

/// How a mailer notices changed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The operating system's notifications (inotify, FSEvents, ...).
    Native,
    /// Scanning the folders every interval, for file systems that send no
    /// notifications (network mounts, some containers).
    Poll(Duration),
}

/// What a reload did, as told to [`Mailer::subscribe`] receivers.
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

/// Reload state every mailer carries, watching or not.
pub(crate) struct Live {
    templates: PathBuf,
    schemas: PathBuf,
    events: broadcast::Sender<ReloadEvent>,
    last_error: ArcSwapOption<Error>,
    generation: AtomicU64,
    /// Dropping it stops the watch; `None` when the mailer does not watch.
    watcher: Mutex<Option<Box<dyn Send>>>,
    target: Arc<Mutex<Target>>,
}

/// Where the watcher sends changes. The watch starts before the first load, so that
/// a save during that load is not lost; until the mailer exists its changes wait.
enum Target {
    Pending(Vec<PathBuf>),
    /// Weak, so the watcher never keeps a mailer alive.
    Mailer(Weak<Inner>),
}

impl Live {
    pub fn new(templates: &Path, schemas: &Path) -> Live {
        Live {
            templates: templates.to_path_buf(),
            schemas: schemas.to_path_buf(),
            events: broadcast::channel(EVENT_BUFFER).0,
            last_error: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            watcher: Mutex::new(None),
            target: Arc::new(Mutex::new(Target::Pending(Vec::new()))),
        }
    }

    /// Records why the set did not load when the mailer was built.
    pub fn broken_at_start(&self, error: Error) {
        for problem in error.problems() {
            let at = problem
                .location()
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::error!(%at, problem = problem.message(), "templates do not load yet");
        }
        self.last_error.store(Some(Arc::new(error)));
    }
}

/// Starts watching the folders of `live`, before the set is first loaded; changes
/// wait until [`attach`] names the mailer they reload. The watch stops when `live`
/// (so the mailer) is dropped, because dropping the debouncer stops its threads.
pub(crate) fn start(live: &Live, mode: Mode) -> Result<()> {
    let mut roots = vec![live.templates.clone()];
    if live.schemas.is_dir() {
        roots.push(live.schemas.clone());
    }
    let filter_roots: Vec<PathBuf> = roots
        .iter()
        .flat_map(|r| [r.clone(), r.canonicalize().unwrap_or_else(|_| r.clone())])
        .collect();
    let target = live.target.clone();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            let changed = relevant_paths(&events, &filter_roots);
            if changed.is_empty() {
                return;
            }
            let weak = match &mut *lock(&target) {
                Target::Pending(waiting) => {
                    waiting.extend(changed);
                    return;
                }
                Target::Mailer(weak) => weak.clone(),
            };
            if let Some(inner) = weak.upgrade() {
                reload(&inner, changed);
            }
        }
        Err(errors) => {
            for error in errors {
                tracing::warn!(%error, "file watcher error");
            }
        }
    };
    let watch_error = |e: notify::Error| {
        Error::new(
            ErrorKind::Config,
            format!("cannot watch {}: {e}", live.templates.display()),
        )
    };
    let watcher = match mode {
        Mode::Native => debounce::<notify::RecommendedWatcher, _>(
            handler,
            RecommendedCache::new(),
            notify::Config::default(),
            &roots,
        ),
        // Modification times are compared in whole seconds, so a second save within
        // the same second would go unseen without comparing contents.
        Mode::Poll(interval) => debounce::<notify::PollWatcher, _>(
            handler,
            NoCache,
            notify::Config::default()
                .with_poll_interval(interval)
                .with_compare_contents(true),
            &roots,
        ),
    }
    .map_err(watch_error)?;
    tracing::info!(templates = %live.templates.display(), ?mode, "watching for changes");
    *lock(&live.watcher) = Some(watcher);
    Ok(())
}

/// Points the watch at the mailer it now serves, and reloads at once if files changed
/// while it was being built.
pub(crate) fn attach(inner: &Arc<Inner>) {
    let target = Target::Mailer(Arc::downgrade(inner));
    let missed = match std::mem::replace(&mut *lock(&inner.live.target), target) {
        Target::Pending(missed) => missed,
        Target::Mailer(_) => Vec::new(),
    };
    if !missed.is_empty() {
        reload(inner, missed);
    }
}

/// A lock that a panic elsewhere does not poison for good: the data is plain.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A debouncer with watcher `W` over every root; the two watchers are different types.
fn debounce<W, C>(
    handler: impl DebounceEventHandler,
    cache: C,
    config: notify::Config,
    roots: &[PathBuf],
) -> notify::Result<Box<dyn Send>>
where
    W: notify::Watcher + Send + 'static,
    C: FileIdCache + Send + 'static,
{
    let mut debouncer = new_debouncer_opt::<_, W, C>(DEBOUNCE, None, handler, cache, config)?;
    for root in roots {
        debouncer.watch(root, RecursiveMode::Recursive)?;
    }
    Ok(Box::new(debouncer))
}

/// The changed files a reload should care about: not reads (our own reload opens
/// every file), not editor swap and backup files.
fn relevant_paths(
    events: &[notify_debouncer_full::DebouncedEvent],
    roots: &[PathBuf],
) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for event in events {
        if matches!(event.kind, EventKind::Access(_)) {
            continue;
        }
        if event.need_rescan() {
            paths.extend(roots.first().cloned());
        }
        for path in &event.paths {
            if !is_litter(path, roots) && !paths.contains(path) {
                paths.push(path.clone());
            }
        }
    }
    paths
}

/// Whether any part of `path` below its watched folder is an editor's temporary file
/// or a hidden folder, as the template loader skips them too.
fn is_litter(path: &Path, roots: &[PathBuf]) -> bool {
    let rel = roots
        .iter()
        .find_map(|root| path.strip_prefix(root).ok())
        .unwrap_or_else(|| Path::new(path.file_name().unwrap_or_default()));
    rel.components()
        .any(|c| c.as_os_str().to_str().is_some_and(is_editor_litter))
}

/// Loads what changed (the whole set when a shared file changed); swaps it in if clean,
/// otherwise keeps the old one and reports every problem.
fn reload(inner: &Inner, changed: Vec<PathBuf>) {
    let live = &inner.live;
    let _span = tracing::info_span!("reload", changed = changed.len()).entered();
    // After a failed reload the set in use is older than the files on disk, so only a
    // full load can tell whether everything is fixed.
    let result = if live.last_error.load().is_some() {
        TemplateSet::load(&live.templates, &live.schemas)
    } else {
        inner.set.load().reload(&changed)
    };
    let event = match result {
        Ok(set) => {
            inner.set.store(Arc::new(set));
            live.last_error.store(None);
            let generation = live.generation.fetch_add(1, Ordering::AcqRel) + 1;
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
            live.last_error.store(Some(error.clone()));
            ReloadEvent::Failed { error, changed }
        }
    };
    // No subscribers is normal: nobody is previewing.
    let _ = live.events.send(event);
}

/// The hot-reload half of the mailer's API.
impl Mailer {
    /// Reload events from now on: one per save (or burst of saves) that changed the
    /// template set, telling whether it was swapped in or refused. Only a mailer built
    /// with [`MailerBuilder::watch`](crate::MailerBuilder::watch) or
    /// [`poll`](crate::MailerBuilder::poll) sends any. The receiver reports the channel
    /// closed once the last mailer clone is gone.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.inner.live.events.subscribe()
    }

    /// Why the files on disk do not load, if the last reload failed; the mailer keeps
    /// rendering with the last set that did. `None` once a reload succeeds again.
    pub fn last_reload_error(&self) -> Option<Arc<Error>> {
        self.inner.live.last_error.load_full()
    }

    /// How many times the set was reloaded and swapped in since the mailer was built.
    pub fn generation(&self) -> u64 {
        self.inner.live.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litter_is_judged_below_the_watched_folder() {
        let roots = [PathBuf::from("/tmp/.tmpAbc/templates")];
        assert!(!is_litter(
            Path::new("/tmp/.tmpAbc/templates/welcome.html"),
            &roots
        ));
        assert!(is_litter(
            Path::new("/tmp/.tmpAbc/templates/.welcome.html.swp"),
            &roots
        ));
        assert!(is_litter(
            Path::new("/tmp/.tmpAbc/templates/welcome.html~"),
            &roots
        ));
        assert!(is_litter(Path::new("/tmp/.tmpAbc/templates/4913"), &roots));
        assert!(is_litter(
            Path::new("/tmp/.tmpAbc/templates/.git/index"),
            &roots
        ));
        assert!(!is_litter(
            Path::new("/tmp/.tmpAbc/templates/a/b.html"),
            &roots
        ));
    }
}
