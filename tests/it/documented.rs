//! The configuration is documented where admins look for it: the README's
//! table and `.env.example` list exactly the variables the parser reads
//! (`config::VARIABLES`), with its defaults.

use std::collections::BTreeMap;

use matrix_turnify::config::VARIABLES;

const README: &str = include_str!("../../README.md");
const ENV_EXAMPLE: &str = include_str!("../../.env.example");

/// The parser's table: name → default, `None` where there is none.
fn parser() -> BTreeMap<&'static str, Option<&'static str>> {
    VARIABLES.iter().map(|v| (v.name, v.default)).collect()
}

/// The rows of the README's configuration table: name → default cell.
fn readme_table() -> BTreeMap<String, String> {
    let section = README
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a Configuration section");
    section
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
fn the_readme_table_lists_every_variable_with_its_default() {
    let table = readme_table();
    let names: Vec<&String> = table.keys().collect();
    let expected: Vec<&str> = parser().keys().copied().collect();
    assert_eq!(names, expected, "README rows against config::VARIABLES");
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
