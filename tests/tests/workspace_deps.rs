//! Enforces the dependency directions between workspace crates that
//! docs/design.md draws: leaves never reach up, the daemon is the only crate
//! that wires subsystems together, and the client links no engine code.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// For each workspace crate, the workspace crates it may use as a normal or
/// build dependency. A crate missing from this table fails the test, so a new
/// crate has to state its place in the graph.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("vessel-vmm", &[][..]),
        ("vessel-agent", &[][..]),
        ("vessel-runtime", &["vessel-vmm", "vessel-agent"][..]),
        ("vessel-registry", &[][..]),
        ("vesseld", &["vessel-runtime", "vessel-registry"][..]),
        ("vessel-cli", &[][..]),
        ("vessel-testkit", &[][..]),
        (
            "vessel-tests",
            &[
                "vessel-runtime",
                "vessel-registry",
                "vesseld",
                "vessel-cli",
                "vessel-testkit",
            ][..],
        ),
    ])
}

/// Dev-dependencies may only pull in the test harness (plus, for the
/// end-to-end crate, anything).
const DEV_ALLOWED: &[&str] = &["vessel-testkit"];

#[test]
fn workspace_dependency_directions_hold() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages array");
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_string())
        .collect();
    let rules = allowed();
    let mut violations = Vec::new();
    for pkg in packages {
        let name = pkg["name"].as_str().expect("name");
        let Some(ok) = rules.get(name) else {
            violations.push(format!(
                "{name}: not in the dependency table; add it with its allowed edges"
            ));
            continue;
        };
        for dep in pkg["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dep name");
            if !members.contains(dep_name) {
                continue;
            }
            let is_dev = dep["kind"].as_str() == Some("dev");
            let permitted = ok.contains(&dep_name)
                || (is_dev && (DEV_ALLOWED.contains(&dep_name) || name == "vessel-tests"));
            if !permitted {
                let kind = if is_dev {
                    "dev-dependency"
                } else {
                    "dependency"
                };
                violations.push(format!("{name} -> {dep_name} ({kind}) is not allowed"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependency directions violated:\n  {}",
        violations.join("\n  ")
    );
}
