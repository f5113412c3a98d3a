//! The preview in real headless Chromium: runs tests/e2e/preview.mjs (playwright-core)
//! against the built binary.
//!
//! Needs Node.js with npm and Debian's `chromium`. Like tests/interop/up.sh, it installs
//! what is missing itself when it runs as root on Debian (apt-get, then `npm ci`);
//! elsewhere it fails with the one command that fixes it. `CHROMIUM` points at another
//! Chromium (never installed over); `MISSIVE_SKIP_BROWSER=1` skips the test.

use crate::common;

use std::path::Path;
use std::process::Command;

const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn the_preview_follows_saves_in_a_real_browser() {
    if std::env::var_os("MISSIVE_SKIP_BROWSER").is_some_and(|v| v == "1") {
        eprintln!("skipped: MISSIVE_SKIP_BROWSER=1");
        return;
    }
    let chromium = chromium();
    let node = ensure_command("node", "nodejs");
    ensure_command("npm", "npm");
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    if !e2e.join("node_modules/playwright-core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&e2e)
            .status()
            .expect("npm runs");
        assert!(
            status.success(),
            "npm ci failed in {}; run `cd tests/e2e && npm ci` to see why",
            e2e.display()
        );
    }
    let output = Command::new(node)
        .arg("preview.mjs")
        .current_dir(&e2e)
        .env("MISSIVE_BIN", common::missive_bin())
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
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

/// The Chromium to drive: `$CHROMIUM` as given, else Debian's, installed if need be.
fn chromium() -> String {
    if let Ok(given) = std::env::var("CHROMIUM") {
        assert!(
            Path::new(&given).is_file(),
            "CHROMIUM={given} does not exist: unset CHROMIUM to use Debian's {DEFAULT_CHROMIUM} \
             (installed by this test when it runs as root), or point it at a Chromium binary"
        );
        return given;
    }
    if !Path::new(DEFAULT_CHROMIUM).is_file() {
        apt_install("chromium", || Path::new(DEFAULT_CHROMIUM).is_file());
    }
    DEFAULT_CHROMIUM.to_string()
}

/// `command` on the PATH, installing Debian's `package` for it if need be.
fn ensure_command(command: &'static str, package: &str) -> &'static str {
    let found = || {
        Command::new(command)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found() {
        apt_install(package, found);
    }
    command
}

/// Installs a Debian package when this runs as root with apt-get, as tests/interop/up.sh
/// does; otherwise, or when that fails, fails with the command that fixes it.
fn apt_install(package: &str, installed: impl Fn() -> bool) {
    let fix = format!(
        "`sudo apt-get install -y --no-install-recommends {package}` (or set \
         MISSIVE_SKIP_BROWSER=1 to skip this test)"
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = Path::new("/usr/bin/apt-get").is_file();
    assert!(
        root && apt,
        "{package} is missing and this test can install it only as root on Debian: run {fix}"
    );
    eprintln!("installing {package} with apt-get (the browser test needs it)");
    let apt_get = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let done = apt_get(&["update", "-qq"])
        && apt_get(&["install", "-y", "-qq", "--no-install-recommends", package]);
    assert!(
        done && installed(),
        "installing {package} with apt-get failed (output above); run {fix}"
    );
}
