//! Timestamps as the service writes them: UTC, milliseconds, `Z`; stored as epoch milliseconds.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch, the one representation stored in both databases.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// `2018-06-07T00:54:34.892Z`, the form the real service used.
pub fn to_rfc3339(ms: Millis) -> String {
    let dt: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// File times without fractions (`2018-06-07T00:55:01Z`).
pub fn to_rfc3339_secs(ms: Millis) -> String {
    let dt: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(to_rfc3339(1_528_332_874_892), "2018-06-07T00:54:34.892Z");
        assert_eq!(to_rfc3339_secs(1_528_332_874_892), "2018-06-07T00:54:34Z");
    }
}
