//! [`WalSync`]: when appends reach the disk, and its text form (`--wal-sync`).

use std::{fmt, str::FromStr, time::Duration};

/// When appends reach the disk, traded against write latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalSync {
    /// fsync every append before acknowledging it: acknowledged writes survive a power loss.
    #[default]
    Always,
    /// fsync an append when at least this long has passed since the last fsync, and on
    /// [`super::Wal::sync`]. A power loss may lose the writes since the last fsync; without
    /// a later append or a `sync()` that window has no end, so the owner should call
    /// `sync()` on a timer and at close.
    Interval(Duration),
    /// Leave it to the OS: an acknowledged write is in the page cache, so it survives the
    /// process crashing but not the machine losing power.
    Never,
}

impl fmt::Display for WalSync {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalSync::Always => formatter.write_str("always"),
            WalSync::Never => formatter.write_str("never"),
            WalSync::Interval(period) => {
                // The largest unit that loses nothing, so the text parses back to this value.
                let nanos = period.as_nanos();
                if nanos % 1_000_000 == 0 {
                    write!(formatter, "interval:{}ms", nanos / 1_000_000)
                } else if nanos % 1_000 == 0 {
                    write!(formatter, "interval:{}us", nanos / 1_000)
                } else {
                    write!(formatter, "interval:{nanos}ns")
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid write-ahead log sync policy {input:?}: {reason}; expected \"always\", \
     \"interval:<duration>\" (e.g. \"interval:100ms\", \"interval:1s\", or \"interval:100\" \
     in milliseconds) or \"never\""
)]
pub struct ParseWalSyncError {
    input: String,
    reason: String,
}

impl FromStr for WalSync {
    type Err = ParseWalSyncError;

    fn from_str(text: &str) -> Result<WalSync, ParseWalSyncError> {
        let error = |reason: String| ParseWalSyncError {
            input: text.to_string(),
            reason,
        };
        let normalized = text.trim().to_ascii_lowercase();
        match normalized.as_str() {
            "always" => return Ok(WalSync::Always),
            "never" => return Ok(WalSync::Never),
            _ => {}
        }
        let Some(period) = normalized.strip_prefix("interval:") else {
            return Err(error("unknown policy".into()));
        };
        parse_duration(period).map(WalSync::Interval).map_err(error)
    }
}

/// `100` (milliseconds), or a duration as `humantime` reads it: `100ms`, `1s`, `1m 30s`,
/// `250us`. The text is lowercased first, so `M` is minutes, never months.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the interval is empty".into());
    }
    if text.bytes().all(|byte| byte.is_ascii_digit()) {
        let millis: u64 = text
            .parse()
            .map_err(|_| "the interval is too large".to_string())?;
        return Ok(Duration::from_millis(millis));
    }
    humantime::parse_duration(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::{super::WalOptions, *};

    #[test]
    fn sync_policies_parse_and_display() {
        let cases = [
            ("always", WalSync::Always),
            ("never", WalSync::Never),
            (" Always ", WalSync::Always),
            (
                "interval:100ms",
                WalSync::Interval(Duration::from_millis(100)),
            ),
            (
                "interval:100",
                WalSync::Interval(Duration::from_millis(100)),
            ),
            ("interval:1s", WalSync::Interval(Duration::from_secs(1))),
            (
                "interval:1m 30s",
                WalSync::Interval(Duration::from_secs(90)),
            ),
            (
                "interval:250us",
                WalSync::Interval(Duration::from_micros(250)),
            ),
            ("interval:0", WalSync::Interval(Duration::ZERO)),
        ];
        for (text, expected) in cases {
            let parsed: WalSync = text
                .parse()
                .unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parsed.to_string().parse::<WalSync>().unwrap(), parsed);
        }
        assert_eq!(WalSync::Always.to_string(), "always");
        assert_eq!(WalSync::Never.to_string(), "never");
        assert_eq!(
            WalSync::Interval(Duration::from_secs(2)).to_string(),
            "interval:2000ms"
        );
        for odd in [
            Duration::from_nanos(1_500),
            Duration::from_nanos(7),
            Duration::from_micros(1_001),
        ] {
            let policy = WalSync::Interval(odd);
            assert_eq!(policy.to_string().parse::<WalSync>().unwrap(), policy);
        }
        for bad in [
            "",
            "sometimes",
            "interval",
            "interval:",
            "interval:5 parsecs",
            "interval:ms",
            "interval:1s5",
            "interval:-1s",
            "interval:99999999999999999999",
        ] {
            let error = bad.parse::<WalSync>().unwrap_err();
            assert!(error.to_string().contains("interval:100ms"), "{error}");
        }
        assert_eq!(WalOptions::default().sync, WalSync::Always);
        assert_eq!(WalOptions::default().segment_bytes, 64 << 20);
    }

    /// Every spelling the parser written here before `humantime` took over accepted.
    #[test]
    fn every_unit_accepted_before_still_parses() {
        let units = [
            ("ns", Duration::from_nanos(3)),
            ("nsec", Duration::from_nanos(3)),
            ("us", Duration::from_micros(3)),
            ("usec", Duration::from_micros(3)),
            ("µs", Duration::from_micros(3)),
            ("ms", Duration::from_millis(3)),
            ("msec", Duration::from_millis(3)),
            ("s", Duration::from_secs(3)),
            ("sec", Duration::from_secs(3)),
            ("secs", Duration::from_secs(3)),
            ("m", Duration::from_secs(180)),
            ("min", Duration::from_secs(180)),
            ("mins", Duration::from_secs(180)),
            ("h", Duration::from_secs(3 * 3600)),
            ("hr", Duration::from_secs(3 * 3600)),
            ("hrs", Duration::from_secs(3 * 3600)),
        ];
        for (unit, expected) in units {
            for text in [format!("interval:3{unit}"), format!("INTERVAL:3 {unit}")] {
                let parsed: WalSync = text
                    .parse()
                    .unwrap_or_else(|error| panic!("{text}: {error}"));
                assert_eq!(parsed, WalSync::Interval(expected), "{text}");
            }
        }
        assert_eq!(
            "interval:1h 2m 3s 4ms".parse::<WalSync>().unwrap(),
            WalSync::Interval(Duration::from_millis(3_723_004))
        );
    }
}
