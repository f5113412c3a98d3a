//! The page itself: an HTML shell with the template index already in it, and its
//! script and stylesheet. The script does the rest through the JSON routes.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use missive::Mailer;

use super::api::escape;

/// The page may run only its own script. The email, shown in a `srcdoc` frame,
/// inherits this policy on top of the frame's sandbox, so its scripts are refused
/// twice; its inline styles and remote images are what a mail client would show.
pub(crate) const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src * data: blob: cid:; font-src * data:; \
     connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const SCRIPT: &str = include_str!("assets/preview.js");
const STYLESHEET: &str = include_str!("assets/preview.css");
const SHELL: &str = include_str!("assets/index.html");

/// `GET /`: the preview page, its index listing every template, locale and example.
pub(crate) async fn index(State(mailer): State<Mailer>) -> impl IntoResponse {
    let mut list = String::new();
    for info in mailer.templates() {
        let name = escape(&info.name);
        let query = query_value(&info.name);
        list.push_str(&format!(
            "<li data-template=\"{name}\"><a class=\"tpl\" href=\"/?t={query}\">{name}</a>"
        ));
        list.push_str("<span class=\"picks\">");
        for i in 0..info.examples {
            list.push_str(&format!(
                "<a class=\"pick\" href=\"/?t={query}&amp;example={i}\" title=\"example {i}\">#{i}</a>"
            ));
        }
        for locale in &info.locales {
            let locale = escape(locale);
            list.push_str(&format!(
                "<a class=\"pick locale\" href=\"/?t={query}&amp;locale={locale}\">{locale}</a>"
            ));
        }
        list.push_str("</span></li>\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        SHELL.replace("<!--INDEX-->", &list),
    )
}

pub(crate) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

pub(crate) async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLESHEET,
    )
}

/// Template names are paths; keep their `/` readable in links, escape the rest.
fn query_value(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_stay_readable_in_links() {
        assert_eq!(query_value("orders/receipt"), "orders/receipt");
        assert_eq!(query_value("a b&c\"<"), "a%20b%26c%22%3C");
    }
}
