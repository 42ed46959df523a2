//! What the configuration's unit tests share: a valid minimum and ways to read the errors.

use super::*;

pub(super) fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(super) const MINIMAL: &[(&str, &str)] = &[("CF_TURN_KEY_ID", "abc123"), ("CF_TURN_API_TOKEN", "tok-en")];

pub(super) fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut all = vars(MINIMAL);
    all.extend(vars(extra));
    Config::from_vars(all)
}

/// The variables the errors name, in order.
#[track_caller]
pub(super) fn named(result: Result<Config, ConfigErrors>) -> Vec<&'static str> {
    match result {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.errors.iter().map(|e| e.variable).collect(),
    }
}

/// The variable of the one error `extra` causes on top of a valid minimum.
#[track_caller]
pub(super) fn error_variable(extra: &[(&str, &str)]) -> &'static str {
    match named(with(extra))[..] {
        [variable] => variable,
        ref more => panic!("expected one error, got {more:?}"),
    }
}
