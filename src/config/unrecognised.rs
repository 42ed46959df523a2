//! Variables that look like the daemon's but are not: one warning each,
//! with the name it most likely meant.

use super::*;

/// The prefixes of the daemon's variables: a name with one of them that is
/// not a variable is most likely a typo of one.
pub(super) const OUR_PREFIXES: [&str; 10] = [
    "CF_",
    "TURN_",
    "SYNAPSE_",
    "CREDENTIAL_",
    "REUSE_",
    "LOG_",
    "LISTEN_",
    "SHUTDOWN_",
    "MAX_",
    "LIVEKIT_",
];

/// Variables that look like the daemon's but are not, each as one warning,
/// with the closest real name when one is near.
pub(super) fn unrecognised<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut found: Vec<String> = names
        .filter(|name| OUR_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .filter(|name| !VARIABLES.iter().any(|v| v.name == *name))
        .map(|name| {
            let closest = VARIABLES
                .iter()
                .map(|v| (edit_distance(name, v.name), v.name))
                .min()
                .filter(|(distance, _)| *distance <= 3);
            match closest {
                Some((_, real)) => format!("{name} is not a matrix-turnify variable; did you mean {real}?"),
                None => format!("{name} is not a matrix-turnify variable and is ignored"),
            }
        })
        .collect();
    found.sort();
    found
}

/// Levenshtein distance: single-character insertions, deletions and
/// substitutions.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn a_variable_that_looks_like_ours_gets_a_warning_with_the_closest_name() {
        let config = with(&[
            ("CF_TURN_API_TOKN", "x"),
            ("SYNAPSE_TIMEOUT", "3"),
            ("LOG_LEVELS", "debug"),
            ("MAX_FROBNICATION", "1"),
            ("HOME", "/root"),
            ("PATH", "/bin"),
        ])
        .expect("a typo does not stop start-up");
        assert_eq!(
            config.unrecognised_variables,
            [
                "CF_TURN_API_TOKN is not a matrix-turnify variable; did you mean CF_TURN_API_TOKEN?",
                "LOG_LEVELS is not a matrix-turnify variable; did you mean LOG_LEVEL?",
                "MAX_FROBNICATION is not a matrix-turnify variable and is ignored",
                "SYNAPSE_TIMEOUT is not a matrix-turnify variable and is ignored",
            ]
        );
        assert!(with(&[]).expect("minimal").unrecognised_variables.is_empty());
    }

    #[test]
    fn a_misspelt_livekit_variable_gets_a_warning() {
        let config = with(&[("LIVEKIT_SFU_ULR", "http://livekit:7880")]).expect("valid");
        assert_eq!(
            config.unrecognised_variables,
            ["LIVEKIT_SFU_ULR is not a matrix-turnify variable; did you mean LIVEKIT_SFU_URL?"]
        );
    }
}
