//! What the property tests share: their configuration.

use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};

/// `cases` cases per property; cases that ever failed are kept beside the source, in
/// `proptest-regressions/`, and tried first.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}
