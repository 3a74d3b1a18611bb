#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The HTTP API against its own /openapi.json with a property-based API
//! fuzzer (schemathesis, from PyPI; `make tools` installs it): no 5xx, every
//! response matches the documented schema, status codes and content types,
//! authentication is enforced (issue #6).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

fn schemathesis() -> PathBuf {
    std::env::var("SNAPBACK_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/snapback/venv/bin/schemathesis")
        })
}

#[test]
fn the_api_conforms_to_its_openapi_description_under_property_based_fuzzing() {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: run `make tools` (CI installs it)",
        st.display()
    );
    let c = cluster();
    let sb = shared_snapback();
    // Some actions to find, so that operations on existing ids are exercised.
    let ns = c.namespace("apifuzz", &[]);
    for i in 0..3 {
        c.apply_as("admin", &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{i}, namespace: {ns}, annotations: {{snapback.io/action: fuzz-{i}}}}}\ndata: {{v: \"{i}\"}}\n"));
    }
    let examples = std::env::var("SNAPBACK_API_FUZZ_EXAMPLES").unwrap_or_else(|_| "50".into());
    let out = Command::new(&st)
        .args([
            "run",
            &format!("https://127.0.0.1:{}/openapi.json", sb.api_port),
        ])
        .arg("--tls-verify")
        .arg(c.certs.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", c.token("admin"))])
        .args([
            "--checks",
            "all",
            "-n",
            &examples,
            "--generation-deterministic",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains(" generated,"))
        .unwrap_or("no summary")
        .trim()
        .to_string();
    record_figure(&format!(
        "api fuzzing (schemathesis, all checks): {summary}"
    ));
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Server error"), "{text}");
}
