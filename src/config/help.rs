//! The variables as `--help` lists them.

use super::VARIABLES;

/// The variables, one per line with default and meaning, for `--help`.
pub fn help_text() -> String {
    let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
    VARIABLES
        .iter()
        .map(|v| {
            let default = match (v.default, v.secret) {
                (Some(default), _) => format!(" (default {default})"),
                (None, true) => " (secret)".to_owned(),
                (None, false) => String::new(),
            };
            format!("  {:width$}  {}{default}\n", v.name, v.help)
        })
        .collect()
}
