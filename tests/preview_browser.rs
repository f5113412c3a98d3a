//! The preview in real headless Chromium: runs tests/e2e/preview.mjs (playwright-core)
//! against the built binary. Needs Node.js and Debian's `chromium`; set
//! `MISSIVE_SKIP_BROWSER=1` to skip where neither can be had.

use std::path::Path;
use std::process::Command;

#[test]
fn the_preview_follows_saves_in_a_real_browser() {
    if std::env::var_os("MISSIVE_SKIP_BROWSER").is_some_and(|v| v == "1") {
        eprintln!("skipped: MISSIVE_SKIP_BROWSER=1");
        return;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install it (`apt-get install -y chromium`), point CHROMIUM \
         at one, or set MISSIVE_SKIP_BROWSER=1 to skip this test"
    );
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    if !e2e.join("node_modules/playwright-core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&e2e)
            .status()
            .expect("npm not found: install Node.js and npm, or set MISSIVE_SKIP_BROWSER=1");
        assert!(status.success(), "npm ci failed in {}", e2e.display());
    }
    let output = Command::new("node")
        .arg("preview.mjs")
        .current_dir(&e2e)
        .env("MISSIVE_BIN", env!("CARGO_BIN_EXE_missive"))
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node not found: install Node.js, or set MISSIVE_SKIP_BROWSER=1");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        e2e.join("artifacts/preview.png").is_file(),
        "no screenshot was saved"
    );
}
