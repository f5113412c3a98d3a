//! Hot reload: watch the template and schema folders, reload the whole set on a save,
//! and swap it in only when it loads cleanly.
//!
//! Folders are watched rather than files because editors rarely write a file in
//! place: they write a temporary file and rename it over the old one, or (vim) move
//! the old one aside first. Watching the folder sees every one of those dances as
//! events on the file's name, which is all a reload needs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{
    new_debouncer_opt, DebounceEventHandler, DebounceEventResult, FileIdCache, NoCache,
    RecommendedCache,
};

use crate::error::{Error, ErrorKind, Result};
use crate::templates::walk::is_editor_litter;
use crate::templates::LiveSet;

/// How long a burst of events must stay quiet before a reload. Editors finish a save
/// within a few milliseconds; this keeps a save to one reload and well inside the
/// 500 ms budget from save to next render.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How a mailer notices changed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The operating system's notifications (inotify, FSEvents, ...).
    Native,
    /// Scanning the folders every interval, for file systems that send no
    /// notifications (network mounts, some containers).
    Poll(Duration),
}

/// A running watch; dropping it stops the watcher's threads.
pub(crate) struct Watch {
    /// In a mutex only to be `Sync`: the debouncer is never touched again.
    _watcher: Mutex<Box<dyn Send>>,
    target: Arc<Mutex<Target>>,
}

/// Where the watcher sends changes. The watch starts before the first load, so that
/// a save during that load is not lost; until the mailer exists its changes wait.
enum Target {
    Pending(Vec<PathBuf>),
    /// Weak, so the watcher never keeps the set (and its mailer) alive.
    Live(Weak<LiveSet>),
}

/// Starts watching `templates` and `schemas`, before the set is first loaded;
/// changes wait until [`Watch::attach`] names the set they reload.
pub(crate) fn start(templates: &Path, schemas: &Path, mode: Mode) -> Result<Watch> {
    let mut roots = vec![templates.to_path_buf()];
    if schemas.is_dir() {
        roots.push(schemas.to_path_buf());
    }
    let filter_roots: Vec<PathBuf> = roots
        .iter()
        .flat_map(|r| [r.clone(), r.canonicalize().unwrap_or_else(|_| r.clone())])
        .collect();
    let target = Arc::new(Mutex::new(Target::Pending(Vec::new())));
    let handler_target = target.clone();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            let changed = relevant_paths(&events, &filter_roots);
            if changed.is_empty() {
                return;
            }
            let weak = match &mut *lock(&handler_target) {
                Target::Pending(waiting) => {
                    waiting.extend(changed);
                    return;
                }
                Target::Live(weak) => weak.clone(),
            };
            if let Some(live) = weak.upgrade() {
                live.reload(changed);
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
            format!("cannot watch {}: {e}", templates.display()),
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
    tracing::info!(templates = %templates.display(), ?mode, "watching for changes");
    Ok(Watch {
        _watcher: Mutex::new(watcher),
        target,
    })
}

impl Watch {
    /// Points the watch at the set it now reloads, and reloads at once if files
    /// changed while it was being loaded.
    pub fn attach(&self, live: &Arc<LiveSet>) {
        let target = Target::Live(Arc::downgrade(live));
        let missed = match std::mem::replace(&mut *lock(&self.target), target) {
            Target::Pending(missed) => missed,
            Target::Live(_) => Vec::new(),
        };
        if !missed.is_empty() {
            live.reload(missed);
        }
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
