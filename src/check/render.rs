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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::finding::Finding;

    #[test]
    fn report_marks_each_line_and_counts_failures() {
        let text = render(&[
            Finding::pass("configuration parses"),
            Finding::fail(
                "Cloudflare answered HTTP 401 Unauthorized",
                "check CF_TURN_API_TOKEN",
            ),
        ]);
        assert_eq!(
            text,
            "✓ configuration parses\n✗ Cloudflare answered HTTP 401 Unauthorized\n    → check CF_TURN_API_TOKEN\n1 of 2 checks failed.\n"
        );
    }

    #[test]
    fn skipped_lines_are_marked_and_not_counted() {
        let text = render(&[
            Finding::pass("LiveKit answers"),
            Finding::warn(
                "nothing answers on 127.0.0.1:7880",
                "run check next to the daemon",
            ),
            Finding::skip("no test join", "the daemon is not running here"),
        ]);
        assert_eq!(
            text,
            "✓ LiveKit answers\n! nothing answers on 127.0.0.1:7880\n    → run check next to the daemon\n\
             - no test join\n    → the daemon is not running here\nAll 2 checks passed, with 1 warning, 1 skipped.\n"
        );
    }
}
