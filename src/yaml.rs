//! YAML for people and for kubectl: JSON values in block style, every
//! string that a YAML 1.1 reader would take for something else quoted.
//!
//! kubectl (sigs.k8s.io/yaml, go-yaml v2) reads YAML 1.1, where `yes`, `on`,
//! `Off`, `y`, `1_000` or `1:20` are booleans and numbers; a YAML 1.2
//! emitter leaves them plain, and the manifests it writes then fail to
//! apply ("expects \" or n, but found t"). Here a string is written plain
//! only when it cannot be read as anything but that string; otherwise it
//! is double-quoted (JSON's escapes are YAML's), or a `|` block when it has
//! several lines (config files in ConfigMaps stay readable).

use serde_json::Value;

/// The value as a YAML document (no `---`), ending with a newline.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => write_seq(items, 0, &mut out),
        scalar => {
            write_scalar(scalar, 0, &mut out);
            out.push('\n');
        }
    }
    out
}

fn indent(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn write_map(map: &serde_json::Map<String, Value>, level: usize, out: &mut String) {
    for (i, (key, value)) in map.iter().enumerate() {
        // The first key of a map inside a sequence item follows its "- ".
        if i > 0 || !out.ends_with("- ") {
            indent(level, out);
        }
        out.push_str(&scalar_string(key));
        out.push(':');
        write_value_after_key(value, level, out);
    }
}

fn write_value_after_key(value: &Value, level: usize, out: &mut String) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(m, level + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(a, level, out);
        }
        scalar => {
            out.push(' ');
            write_scalar(scalar, level + 2, out);
            out.push('\n');
        }
    }
}

fn write_seq(items: &[Value], level: usize, out: &mut String) {
    for item in items {
        indent(level, out);
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map(m, level + 2, out),
            Value::Array(a) if !a.is_empty() => {
                out.pop();
                out.push('\n');
                write_seq(a, level + 2, out);
            }
            scalar => {
                write_scalar(scalar, level + 2, out);
                out.push('\n');
            }
        }
    }
}

/// A scalar (or an empty map or list) where a value goes; `level` is the
/// indentation of a block string's lines.
fn write_scalar(value: &Value, level: usize, out: &mut String) {
    debug_assert!(!is_block(value));
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => match block_string(s, level) {
            Some(block) => out.push_str(&block),
            None => out.push_str(&scalar_string(s)),
        },
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// A string of several lines as a literal block (`|`, `|-`, `|+`), when
/// its lines allow one: no tabs or other control characters, no trailing
/// spaces (a block keeps them, but editors and diffs lose them), no line
/// that starts with a space first (it would need an indentation indicator).
fn block_string(s: &str, level: usize) -> Option<String> {
    let body = s.trim_end_matches('\n');
    // One line (and newlines after it): quoted reads better than a block.
    if !body.contains('\n') {
        return None;
    }
    let lines: Vec<&str> = body.split('\n').collect();
    let printable = |c: char| !c.is_control() && c != '\u{feff}';
    if lines[0].starts_with(' ')
        || lines
            .iter()
            .any(|l| l.ends_with(' ') || !l.chars().all(printable))
    {
        return None;
    }
    let chomp = match s.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut out = format!("|{chomp}");
    for line in &lines {
        out.push('\n');
        if !line.is_empty() {
            indent(level, &mut out);
            out.push_str(line);
        }
    }
    // `|+` keeps the newlines after the last line as empty lines.
    for _ in 1..(s.len() - body.len()) {
        out.push('\n');
    }
    Some(out)
}

/// Words YAML 1.1 (any case of them) or 1.2 reads as booleans or null.
const RESERVED: &[&str] = &[
    "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~",
];

/// The string plain when nothing else can be read from it, else quoted.
fn scalar_string(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_string()
    } else {
        quoted(s)
    }
}

/// Double-quoted: JSON's escapes (YAML's too), and YAML's for what JSON
/// leaves raw but YAML does not allow in a document (DEL, the C1 controls,
/// U+FFFE/U+FFFF).
fn quoted(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '\u{7f}'..='\u{9f}' => out.push_str(&format!("\\x{:02X}", c as u32)),
            '\u{fffe}' | '\u{ffff}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn plain_is_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // A letter, `/` or `_` first: never a number, a date, `.inf`, an
    // indicator (`-`, `?`, `:`, `[`, `{`, `!`, `&`, `*`, `#`, `|`, `>`,
    // `'`, `"`, `%`, `@`, `` ` ``) or a merge key.
    (first.is_ascii_alphabetic() || first == '/' || first == '_')
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '_' | '/' | '-' | ' ' | ':' | '@' | '=' | '+' | ',')
        })
        && !s.ends_with(' ')
        && !s.ends_with(':')
        && !s.contains(": ")
        && !s.contains(" #")
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
}

/// Several values as one multi-document YAML stream.
pub fn documents<'a>(values: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for v in values {
        out.push_str("---\n");
        out.push_str(&to_string(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_a_yaml_1_1_reader_would_misread_are_quoted() {
        for s in [
            "yes",
            "Yes",
            "NO",
            "on",
            "Off",
            "y",
            "n",
            "true",
            "False",
            "null",
            "~",
            "1_000",
            "1:20",
            "2026-01-01",
            "0x1F",
            "012",
            "1e3",
            ".inf",
            "-.5",
            "+1",
            "",
            " lead",
            "trail ",
            "a: b",
            "x #y",
            "-",
            "*ref",
            "&a",
            "!tag",
            "[x]",
            "{x}",
            "'q'",
            "\"q\"",
            "%p",
            "@at",
            "`b`",
            "|",
            ">",
            "?",
            "<<",
            "key:",
            "tab\there",
        ] {
            let y = scalar_string(s);
            assert!(y.starts_with('"'), "{s:?} left plain");
            assert!(
                !y.chars().any(|c| ('\u{7f}'..='\u{9f}').contains(&c)
                    || ('\u{fffe}'..='\u{ffff}').contains(&c)),
                "{s:?}: a character YAML does not allow raw: {y:?}"
            );
            let back: String = serde_yaml::from_str(&y).unwrap();
            assert_eq!(back, s);
        }
        for s in [
            "blue",
            "nginx:1.25",
            "app.kubernetes.io/name",
            "a b",
            "/etc/x",
            "_x",
            "yesterday",
        ] {
            assert_eq!(scalar_string(s), s);
        }
    }

    #[test]
    fn objects_round_trip_and_read_as_kubectl_reads_them() {
        let v = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "app", "labels": {"custom": "yes"}, "annotations": {}},
            "data": {
                "a": "yes", "b": "on", "c": "NO", "g": "1_000", "t": "1:20",
                "d": "2026-01-01", "e": "", "conf": "x: 1\ny: [2]\n", "keep": "a\n\n",
                "strip": "a\nb", "spaces": "a \nb\n", "indented": "  a\nb\n"
            },
            "list": [1, "2", {"k": "v", "n": {"m": []}}, [true, null], []],
            "empty": {}, "n": 1.5, "neg": -3, "flag": false, "nothing": null,
        });
        let y = to_string(&v);
        let back: Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(back, v, "{y}");
        assert!(y.contains("custom: \"yes\""), "{y}");
        assert!(y.contains("conf: |\n    x: 1\n    y: [2]\n"), "{y}");
        assert!(y.contains("strip: |-\n    a\n    b\n"), "{y}");
        // No plain scalar a YAML 1.1 reader would turn into a bool or a
        // number where the JSON had a string.
        for line in y.lines() {
            if let Some((_, value)) = line.split_once(": ") {
                let lower = value.to_ascii_lowercase();
                assert!(
                    !RESERVED.contains(&lower.as_str())
                        || value == "true"
                        || value == "false"
                        || value == "null",
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn top_level_scalars_and_documents() {
        assert_eq!(to_string(&json!("yes")), "\"yes\"\n");
        assert_eq!(to_string(&json!({})), "{}\n");
        assert_eq!(
            documents(&[json!({"a": 1}), json!({"b": [1]})]),
            "---\na: 1\n---\nb:\n- 1\n"
        );
    }
}
