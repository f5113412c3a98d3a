//! The watcher ends with the last mailer clone. Alone in its own test binary, so the
//! threads it counts are only this test's. Threads are counted through /proc.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use missive::Mailer;

/// Names of this process's threads that belong to the file watcher.
fn watcher_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
            if name.starts_with("notify-rs") {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

#[test]
fn dropping_the_last_clone_stops_the_watcher() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mailer, _) = Mailer::builder()
        .templates(root.join("templates"))
        .schemas(root.join("schemas"))
        .watch(true)
        .build_in_memory()
        .unwrap();
    assert!(!watcher_threads().is_empty(), "watching starts threads");
    let mut rx = mailer.subscribe();
    let clone = mailer.clone();
    drop(mailer);
    assert!(
        !watcher_threads().is_empty(),
        "a clone still uses the watcher"
    );
    drop(clone);

    // Nothing keeps the mailer alive: its reload channel closes at once.
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Closed)
    ));
    // And the threads wind down (within one debounce tick; the bound is generous).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !watcher_threads().is_empty() {
        assert!(
            Instant::now() < deadline,
            "still running: {:?}",
            watcher_threads()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
