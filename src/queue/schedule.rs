//! When a deferred message is tried again, and the durations the config writes as `30s`.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// The retry schedule: exponential from `min` to `max`, with jitter, until the
/// message is `lifetime` old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (from 1): `min · 2^(attempt-1)`,
    /// capped at `max`, then drawn uniformly from its upper half so that messages
    /// deferred together by one outage do not all come back in the same instant.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let base = self
            .min
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.max)
            .min(self.max)
            .max(self.min);
        let half = base / 2;
        let jittered = half + half.mul_f64(random.clamp(0.0, 1.0));
        jittered.max(self.min.min(base))
    }
}

/// Reads a duration as `missive.yaml` writes them: `250ms`, `30s`, `5m`, `2h`, `5d`,
/// or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad_duration(text))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(bad_duration(text)),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad_duration(text))
}

fn bad_duration(text: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("`{text}` is not a duration; write e.g. 500ms, 30s, 5m, 2h or 5d"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "5 weeks", "-3s", "m"] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_in_the_upper_half() {
        let b = Backoff {
            min: Duration::from_secs(300),
            max: Duration::from_secs(4000),
        };
        // Without jitter (random = 1) the waits are 300, 600, 1200, 2400, 4000, 4000.
        let top: Vec<u64> = (1..=6).map(|a| b.delay(a, 1.0).as_secs()).collect();
        assert_eq!(top, [300, 600, 1200, 2400, 4000, 4000]);
        // The lowest draw is half the wait, but never below the minimum.
        assert_eq!(b.delay(1, 0.0).as_secs(), 300);
        assert_eq!(b.delay(3, 0.0).as_secs(), 600);
        assert_eq!(b.delay(9, 0.0).as_secs(), 2000);
        // Huge attempt numbers do not overflow.
        assert_eq!(b.delay(u32::MAX, 1.0).as_secs(), 4000);
    }
}
