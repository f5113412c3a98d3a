//! Addresses: one (`Name <addr>` or bare) or a comma-separated list, as written in
//! the config, given by the caller or rendered from front-matter. Line breaks are
//! refused everywhere, so no address can inject a header.

use std::str::FromStr;

use lettre::message::{Mailbox, Mailboxes};

use crate::error::{Error, ErrorKind, Result};

/// The header fields a template sets, at whatever stage they are: as written in the
/// front-matter (`Header<Field, Field>`), and rendered (`Header<String, Mailbox>`).
#[derive(Debug, Clone)]
pub(crate) struct Header<T, A> {
    pub subject: T,
    pub from: Option<A>,
    pub reply_to: Option<A>,
    pub to: Vec<A>,
    pub cc: Vec<A>,
    pub bcc: Vec<A>,
    /// Extra headers, by name.
    pub headers: Vec<(String, T)>,
}

/// One rendered address, or why not (without the value).
pub(crate) fn mailbox_or_reason(value: &str) -> Result<Mailbox, String> {
    if value.contains(['\r', '\n']) {
        return Err("the rendered address contains a line break".into());
    }
    Mailbox::from_str(value.trim()).map_err(|e| format!("not a valid address ({e})"))
}

/// A rendered comma-separated address list, or which entry is wrong (without values).
pub(crate) fn mailboxes_or_reason(value: &str) -> Result<Vec<Mailbox>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    if value.contains(['\r', '\n']) {
        return Err("the rendered address list contains a line break".into());
    }
    Mailboxes::from_str(value.trim())
        .map(|m| m.into_iter().collect())
        .map_err(|e| {
            let entries = split_addresses(value);
            let bad = entries
                .iter()
                .position(|entry| Mailbox::from_str(entry.trim()).is_err());
            match bad {
                Some(i) if entries.len() > 1 => format!(
                    "address {} of the {} in the list is not valid ({e})",
                    i + 1,
                    entries.len()
                ),
                _ => format!("not a valid address ({e})"),
            }
        })
}

/// The entries of an address list: cut at commas outside quotes and `<…>`.
fn split_addresses(list: &str) -> Vec<&str> {
    let mut entries = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                entries.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&list[start..]);
    entries.retain(|e| !e.trim().is_empty());
    entries
}

/// One address, `Name <addr>` or bare.
pub(crate) fn parse_mailbox(value: &str) -> Result<Mailbox> {
    if value.contains(['\r', '\n']) {
        return Err(Error::new(
            ErrorKind::Address,
            format!("address {value:?} contains a line break"),
        ));
    }
    Mailbox::from_str(value.trim()).map_err(|e| {
        Error::new(
            ErrorKind::Address,
            format!("`{}` is not a valid address: {e}", value.trim()),
        )
    })
}

/// A comma-separated list of addresses; empty yields none.
pub(crate) fn parse_mailboxes(value: &str) -> Result<Vec<Mailbox>> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    if value.contains(['\r', '\n']) {
        return Err(Error::new(
            ErrorKind::Address,
            format!("address list {value:?} contains a line break"),
        ));
    }
    Mailboxes::from_str(value.trim())
        .map(|m| m.into_iter().collect())
        .map_err(|e| {
            Error::new(
                ErrorKind::Address,
                format!("`{}` is not a valid address list: {e}", value.trim()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_explain() {
        assert_eq!(
            parse_mailbox("Ada Lovelace <ada@example.test>")
                .unwrap()
                .to_string(),
            "Ada Lovelace <ada@example.test>"
        );
        assert_eq!(parse_mailboxes("a@x.test, B <b@x.test>").unwrap().len(), 2);
        assert!(parse_mailboxes("  ").unwrap().is_empty());
        let err = parse_mailbox("not an address").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Address);
        assert!(parse_mailbox("a@x.test\r\nBcc: evil@x.test").is_err());
    }

    #[test]
    fn a_bad_list_entry_is_named_by_its_place_not_its_value() {
        assert_eq!(
            split_addresses("\"Doe, Jo\" <jo@x.test>, <a,b@x.test>, c@x.test,"),
            ["\"Doe, Jo\" <jo@x.test>", " <a,b@x.test>", " c@x.test"]
        );
        let reason =
            mailboxes_or_reason("\"Doe, Jo\" <jo@x.test>, secret-token, c@x.test").unwrap_err();
        assert!(
            reason.starts_with("address 2 of the 3 in the list is not valid"),
            "{reason}"
        );
        assert!(!reason.contains("secret-token"), "{reason}");
        assert!(mailboxes_or_reason("\"Doe, Jo\" <jo@x.test>, c@x.test").is_ok());
    }
}
