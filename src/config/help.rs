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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let help = help_text();
        for variable in VARIABLES {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{} ", variable.name)))
                .unwrap_or_else(|| panic!("{} missing in {help}", variable.name));
            if let Some(default) = variable.default {
                assert!(line.contains(&format!("(default {default})")), "{line}");
            }
        }
    }
}
