//! Validated names. ARM compares names ignoring case, so each keeps its spelling for display
//! and offers a lower-case [`key`](ResourceName::key) for storage and lookups.

use std::fmt;

use crate::error::{ApiError, ErrorCode};

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// What kind of name is being checked; decides the pattern and the length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// workspace, experiment, cluster, job, file server: `^[-\w_]+$`, 1..=64.
    BatchAi(&'static str),
    /// resource group: `^[-\w\._]+$`, 1..=90, not ending in a period (ARM's rule).
    ResourceGroup,
    /// location: `^[-\w\._]+$`.
    Location,
}

/// A name accepted by Batch AI or ARM.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName(String);

impl ResourceName {
    pub fn parse(raw: &str, kind: NameKind) -> Result<Self, ApiError> {
        let (what, max, dots) = match kind {
            NameKind::BatchAi(what) => (what, 64, false),
            NameKind::ResourceGroup => ("resource group", 90, true),
            NameKind::Location => ("location", 64, true),
        };
        let ok_chars = raw.chars().all(|c| is_word(c) || c == '-' || (dots && (c == '.' || c == '(' || c == ')')));
        let len = raw.chars().count();
        let trailing_dot = kind == NameKind::ResourceGroup && raw.ends_with('.');
        if len == 0 || len > max || !ok_chars || trailing_dot {
            let pattern = if dots { r"^[-\w\._]+$" } else { r"^[-\w_]+$" };
            return Err(ApiError::new(
                ErrorCode::InvalidResourceName,
                format!(
                    "The {what} name '{}' is invalid: it must match {pattern} and be 1 to {max} characters long.",
                    raw.chars().take(100).collect::<String>()
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form used as a storage key.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JOB: NameKind = NameKind::BatchAi("job");

    #[test]
    fn accepts_batchai_names() {
        for ok in ["a", "job-1", "my_job", "Ünïcode", &"x".repeat(64)] {
            assert!(ResourceName::parse(ok, JOB).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_batchai_names() {
        for bad in ["", "a.b", "a b", "a/b", &"x".repeat(65), "..", "a%2fb"] {
            let err = ResourceName::parse(bad, JOB).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidResourceName, "{bad}");
        }
    }

    #[test]
    fn resource_groups_allow_dots_but_not_trailing() {
        assert!(ResourceName::parse("my.rg_(1)", NameKind::ResourceGroup).is_ok());
        assert!(ResourceName::parse("rg.", NameKind::ResourceGroup).is_err());
    }

    #[test]
    fn key_folds_case() {
        let n = ResourceName::parse("MyJob", JOB).unwrap();
        assert_eq!(n.key(), "myjob");
        assert_eq!(n.as_str(), "MyJob");
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_names_have_no_separators(s in ".{0,80}") {
            if let Ok(n) = ResourceName::parse(&s, JOB) {
                prop_assert!(!n.as_str().contains('/'));
                prop_assert!(!n.as_str().contains('.'));
            }
        }
    }
}
