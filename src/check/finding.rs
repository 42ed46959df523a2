//! A check's outcome: a pass, a warning or a failure, each failure with
//! the variable to look at.

use crate::config::ConfigErrors;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Works, but the admin should know: does not fail the check.
    Warning,
    Failed,
    /// Not tried, and why: neither passes nor fails, and is not counted.
    Skipped,
}

/// One line of the report.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
    /// What to change, or what it means.
    pub hint: Option<String>,
}

impl Finding {
    pub(super) fn pass(what: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Passed,
            what: what.into(),
            hint: None,
        }
    }

    pub(super) fn warn(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warning,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }

    pub(super) fn skip(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Skipped,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }

    pub(super) fn fail(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Failed,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn failed(&self) -> bool {
        self.verdict == Verdict::Failed
    }
}

/// The report for a configuration that does not parse: the typo warnings
/// first, since a misspelt name is often why a required one is "not set",
/// then one line per error.
pub fn rejected(rejected: &ConfigErrors) -> Vec<Finding> {
    let warnings = rejected.warnings.iter().map(|warning| unrecognised(warning));
    let errors = rejected.errors.iter().map(|error| {
        Finding::fail(
            format!("configuration: {error}"),
            format!("fix {} and run the check again", error.variable),
        )
    });
    warnings.chain(errors).collect()
}

pub(super) fn unrecognised(warning: &str) -> Finding {
    Finding::warn(warning, "it has no effect; remove or rename it")
}
