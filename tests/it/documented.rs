//! The configuration is documented where admins look for it: the table of
//! `docs/configuration.md` and `.env.example` list exactly the variables the
//! parser reads (`config::VARIABLES`), with its defaults.

use std::collections::BTreeMap;

use matrix_turnify::config::VARIABLES;

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const ENV_EXAMPLE: &str = include_str!("../../.env.example");

/// The parser's table: name → default, `None` where there is none.
fn parser() -> BTreeMap<&'static str, Option<&'static str>> {
    VARIABLES.iter().map(|v| (v.name, v.default)).collect()
}

/// The rows of the variables table: name → default cell.
fn documented_table() -> BTreeMap<String, String> {
    CONFIGURATION
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let name = cells[0].trim_start_matches("| ").trim_matches('`').to_owned();
            (name, cells[1].trim().to_owned())
        })
        .collect()
}

#[test]
fn the_documented_table_lists_every_variable_with_its_default() {
    let table = documented_table();
    let names: Vec<&String> = table.keys().collect();
    let expected: Vec<&str> = parser().keys().copied().collect();
    assert_eq!(
        names, expected,
        "docs/configuration.md rows against config::VARIABLES"
    );
    for (name, default) in parser() {
        let cell = &table[name];
        match default {
            Some(default) => assert_eq!(cell, &format!("`{default}`"), "{name}"),
            None => assert!(cell.starts_with('—'), "{name}: {cell}"),
        }
    }
}

#[test]
fn env_example_lists_every_variable_with_its_default() {
    // `NAME=value` is the default in force; `# NAME=value` an example of a
    // variable that is unset by default.
    let mut lines: BTreeMap<&str, (bool, &str)> = BTreeMap::new();
    for line in ENV_EXAMPLE.lines() {
        let (commented, rest) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((name, value)) = rest.split_once('=') else {
            continue;
        };
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            assert!(lines.insert(name, (commented, value)).is_none(), "{name} twice");
        }
    }
    let names: Vec<&str> = lines.keys().copied().collect();
    let expected: Vec<&str> = parser().keys().copied().collect();
    assert_eq!(names, expected, ".env.example against config::VARIABLES");
    for (name, default) in parser() {
        let (commented, value) = lines[name];
        if commented {
            assert_eq!(
                default, None,
                "{name} has a default, so its line is not a comment"
            );
        } else {
            assert_eq!(value, default.unwrap_or(""), "{name}");
        }
    }
}
