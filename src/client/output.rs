//! Output like kubectl's: aligned tables, relative ages, colour on terminals.

use std::io::IsTerminal;

use jiff::Timestamp;
use serde_json::Value;

/// A kubectl-style age: 45s, 5m, 3h, 2d.
pub fn age(since: Option<&str>, now: Timestamp) -> String {
    let Some(t) = since.and_then(|s| s.parse::<Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    let secs = now.duration_since(t).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `s` with its control characters escaped (`\u{1b}`, `\n`, `\r`, `\t`…):
/// what users wrote (an action's description, a user name, a message
/// quoting them) cannot move the cursor, erase lines, retitle the window
/// or break the table on the reader's terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<String>()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Columns padded to the widest cell, separated by three spaces, like
/// kubectl; every cell [`printable`].
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn color_enabled(no_color: bool) -> bool {
    !no_color && std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

/// A unified diff with added lines green and removed lines red.
pub fn colorize_diff(diff: &str, color: bool) -> String {
    if !color {
        return diff.to_string();
    }
    diff.lines()
        .map(|l| {
            if l.starts_with("+++") || l.starts_with("---") {
                format!("\x1b[1m{l}\x1b[0m")
            } else if l.starts_with('+') {
                format!("\x1b[32m{l}\x1b[0m")
            } else if l.starts_with('-') {
                format!("\x1b[31m{l}\x1b[0m")
            } else if l.starts_with("@@") {
                format!("\x1b[36m{l}\x1b[0m")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `resource.group/name` the way kubectl names objects.
pub fn object_name(r: &Value) -> String {
    let group = str_of(r, "group");
    let resource = str_of(r, "resource");
    let sub = str_of(r, "subresource");
    let kind = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let sub = if sub.is_empty() {
        String::new()
    } else {
        format!(" ({sub})")
    };
    format!("{kind}/{}{sub}", str_of(r, "name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_users_wrote_cannot_drive_the_terminal() {
        let evil = "deploy\u{1b}[2K\rDescription:  harmless\u{1b}]0;title\u{7}";
        let shown = printable(evil);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(
            shown,
            "deploy\\u{1b}[2K\\rDescription:  harmless\\u{1b}]0;title\\u{7}"
        );
        assert_eq!(printable("plain naïve text"), "plain naïve text");
        let t = table(&["A"], &[vec!["x\ny".into()]]);
        assert_eq!(t, "A\nx\\ny\n");
    }

    #[test]
    fn ages_like_kubectl() {
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        assert_eq!(age(Some("2026-11-22T11:59:15Z"), now), "45s");
        assert_eq!(age(Some("2026-11-22T11:55:00Z"), now), "5m");
        assert_eq!(age(Some("2026-11-22T09:00:00Z"), now), "3h");
        assert_eq!(age(Some("2026-11-20T12:00:00Z"), now), "2d");
        assert_eq!(age(None, now), "<unknown>");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["a".into(), "open".into()],
                vec!["long-id".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID        STATE\na         open\nlong-id   x\n");
    }

    #[test]
    fn diffs_are_plain_without_a_terminal() {
        let d = "--- prior\n+++ current\n-a\n+b\n";
        assert_eq!(colorize_diff(d, false), d);
        assert!(colorize_diff(d, true).contains("\x1b[32m+b"));
    }
}
