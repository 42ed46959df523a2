//! The process environment, narrowed to the daemon's variables: a value is
//! read only through its [`Variable`](super::Variable).

use std::collections::HashMap;

use super::*;

/// The process environment, narrowed to the daemon's variables. A value is
/// read only through its [`Variable`], so a misspelt name cannot compile.
pub(super) struct Env {
    values: HashMap<&'static str, String>,
}

impl Env {
    pub(super) fn new<I>(vars: I) -> Self
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let values = vars
            .into_iter()
            // An empty (or blank) variable counts as unset (docs/behaviour.md §7).
            .filter(|(_, value)| !value.trim().is_empty())
            .filter_map(|(name, value)| {
                let known = VARIABLES.iter().find(|v| v.name == name)?;
                Some((known.name, value))
            })
            .collect();
        Self { values }
    }

    /// The value set in the environment.
    pub(super) fn set(&self, variable: &Variable) -> Option<String> {
        self.values.get(variable.name).cloned()
    }

    /// The value set, or else the documented default.
    pub(super) fn value(&self, variable: &Variable) -> Option<String> {
        self.set(variable).or_else(|| variable.default.map(str::to_owned))
    }
}

/// The value set, or the default of a variable that has one.
pub(super) fn value_or_default(env: &Env, variable: &Variable) -> String {
    env.value(variable).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let config = with(&[("TURN_CREDENTIAL_TTL_SECONDS", ""), ("LOG_LEVEL", "  ")]).expect("valid");
        assert_eq!(config.turn_ttl_seconds, 86_400);
        assert_eq!(config.log_level, LevelFilter::INFO);
        let result = Config::from_vars(vars(&[("CF_TURN_KEY_ID", ""), ("CF_TURN_API_TOKEN", "t")]));
        assert_eq!(named(result), ["CF_TURN_KEY_ID"], "an empty key id is missing");
    }
}
