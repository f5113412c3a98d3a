//! Save-to-visible latency of hot reload: how long after a template file is written the
//! next render shows the change. Prints median and max over many saves, for native
//! notifications and for `--poll` at its default interval. Run: `cargo bench --bench reload`.

use std::path::Path;
use std::time::{Duration, Instant};

use missive::Mailer;

const SAVES: usize = 60;
/// Least gap between saves, so each one is its own reload rather than part of a burst.
const PAUSE: Duration = Duration::from_millis(150);
/// Up to this much more, varied per save so saves do not fall into step with the poll
/// interval and measure only one phase of it.
const JITTER_MS: u64 = 250;
/// The contract: a saved change is visible to the next render within this.
const BUDGET: Duration = Duration::from_millis(500);

fn main() {
    let native = measure("native notifications", |b| b.watch(true));
    let poll = measure("--poll (250 ms)", |b| b.poll(Duration::from_millis(250)));
    let worst = native.max(poll);
    println!(
        "budget {} ms: {}",
        BUDGET.as_millis(),
        if worst <= BUDGET { "met" } else { "MISSED" }
    );
}

/// Saves `welcome.html` [`SAVES`] times and returns the slowest save-to-render time.
fn measure(
    label: &str,
    watch: impl Fn(missive::MailerBuilder) -> missive::MailerBuilder,
) -> Duration {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&root.join("templates"), &dir.path().join("templates"));
    copy_dir(&root.join("schemas"), &dir.path().join("schemas"));
    let builder = Mailer::builder()
        .templates(dir.path().join("templates"))
        .schemas(dir.path().join("schemas"));
    let (mailer, _) = watch(builder).build_in_memory().expect("templates load");
    let data = mailer.example("welcome", 0).expect("example");
    let file = dir.path().join("templates/welcome.html");
    let original = std::fs::read_to_string(&file).expect("welcome.html");

    let mut samples = Vec::with_capacity(SAVES);
    for i in 0..SAVES {
        let marker = format!("Save number {i}, ");
        std::fs::write(&file, original.replace("Welcome aboard, ", &marker)).expect("save");
        let saved = Instant::now();
        loop {
            let html = mailer.render("welcome", &data).expect("render");
            if html.html().contains(&marker) {
                break;
            }
            assert!(
                saved.elapsed() < Duration::from_secs(10),
                "save {i} never showed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        samples.push(saved.elapsed());
        let jitter = (i as u64 * 97) % JITTER_MS;
        std::thread::sleep(PAUSE + Duration::from_millis(jitter));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    println!(
        "{label}: {SAVES} saves, save-to-render median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(median),
        ms(samples[samples.len() * 9 / 10]),
        ms(max),
    );
    max
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}
