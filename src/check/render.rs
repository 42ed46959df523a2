//! The findings as `check` prints them: one line each, then a summary.

use std::fmt::Write as _;

use super::*;

/// The report as printed: `✓`/`!`/`✗` lines, hints indented under them.
pub fn render(findings: &[Finding]) -> String {
    let mut text = String::new();
    for finding in findings {
        let mark = match finding.verdict {
            Verdict::Passed => '✓',
            Verdict::Warning => '!',
            Verdict::Failed => '✗',
            Verdict::Skipped => '-',
        };
        let _ = writeln!(text, "{mark} {}", finding.what);
        if let Some(hint) = &finding.hint {
            let _ = writeln!(text, "    → {hint}");
        }
    }
    let failed = findings.iter().filter(|f| f.failed()).count();
    let warnings = match findings.iter().filter(|f| f.verdict == Verdict::Warning).count() {
        0 => String::new(),
        1 => ", with 1 warning".to_owned(),
        n => format!(", with {n} warnings"),
    };
    let skipped = findings.iter().filter(|f| f.verdict == Verdict::Skipped).count();
    let tried = findings.len() - skipped;
    let skipped = match skipped {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    let _ = match failed {
        0 => writeln!(text, "All {tried} checks passed{warnings}{skipped}."),
        n => writeln!(text, "{n} of {tried} checks failed{warnings}{skipped}."),
    };
    text
}
