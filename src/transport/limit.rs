//! Per-transport limits: a send rate (`rate: 30/min`) and a bound on sends in flight
//! (`max_concurrent: 4`), as a wrapper around any [`Transport`]. Providers cap what one
//! mailbox may send per minute and at once; going over costs 429s and, at Google, a
//! mailbox locked for a day, so the limit waits rather than fails.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{async_trait, Delivery, Email, Transport};

/// A send rate such as `30/min`: so many messages per second, minute, hour or day.
///
/// ```
/// let rate: missive::Rate = "30/min".parse()?;
/// assert_eq!(rate.interval(), std::time::Duration::from_secs(2));
/// # Ok::<(), missive::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    per: Duration,
}

impl Rate {
    /// `count` messages per `per`.
    pub fn new(count: u32, per: Duration) -> Result<Rate> {
        if count == 0 || per.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "a rate must allow at least one message per period",
            ));
        }
        Ok(Rate { count, per })
    }

    /// The time between two sends at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl std::str::FromStr for Rate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Rate> {
        let bad = || {
            Error::new(
                ErrorKind::Config,
                format!(
                    "`{text}` is not a rate: write a count per unit, like `30/min` \
                     (units: s, min, h, day)"
                ),
            )
        };
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        Rate::new(count, per).map_err(|_| bad())
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            86_400 => "day",
            _ => return write!(f, "{}/{}s", self.count, self.per.as_secs_f64()),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Rate, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e: Error| serde::de::Error::custom(e.message()))
    }
}

/// A transport that waits for its turn: at most `max_concurrent` sends at once and,
/// with a rate, sends spaced evenly at that rate (a token bucket holding one token, so
/// a burst never exceeds the rate in any window).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> missive::Result<()> {
/// let inbox = missive::Inbox::default();
/// let limited = missive::Limited::new(inbox.clone(), Some("600/min".parse()?), 2);
/// let mailer = missive::Mailer::builder().transport(limited).build()?;
/// let data = mailer.example("welcome", 0)?;
/// mailer.send_template("welcome", &data).await?;
/// assert_eq!(inbox.len(), 1);
/// # Ok(()) }
/// ```
pub struct Limited<T> {
    inner: T,
    rate: Option<Rate>,
    /// When the next send may start. Held while a send waits for its turn, so that
    /// the interval runs from when the previous one really started, however late its
    /// task woke.
    next: tokio::sync::Mutex<Option<Instant>>,
    permits: Semaphore,
    max_concurrent: usize,
}

impl<T: fmt::Debug> fmt::Debug for Limited<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limited")
            .field("inner", &self.inner)
            .field("rate", &self.rate.map(|r| r.to_string()))
            .field("max_concurrent", &self.max_concurrent)
            .finish()
    }
}

impl<T: Transport> Limited<T> {
    /// Wraps `inner`; `max_concurrent` is at least 1.
    pub fn new(inner: T, rate: Option<Rate>, max_concurrent: usize) -> Limited<T> {
        let max_concurrent = max_concurrent.max(1);
        Limited {
            inner,
            rate,
            next: tokio::sync::Mutex::new(None),
            permits: Semaphore::new(max_concurrent),
            max_concurrent,
        }
    }
}

#[async_trait]
impl<T: Transport> Transport for Limited<T> {
    async fn send(&self, email: &Email) -> Result<Delivery> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorKind::Transient, "the mailer is shutting down"))?;
        if let Some(rate) = self.rate {
            // Taken with a permit held: at most `max_concurrent` sends queue here.
            let mut next = self.next.lock().await;
            if let Some(slot) = next.filter(|slot| *slot > Instant::now()) {
                tracing::debug!(
                    transport = self.inner.name(),
                    wait_ms = u64::try_from(slot.duration_since(Instant::now()).as_millis())
                        .unwrap_or(u64::MAX),
                    "waiting for the send rate"
                );
                tokio::time::sleep_until(slot.into()).await;
            }
            *next = Some(Instant::now() + rate.interval());
        }
        self.inner.send(email).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn parallelism(&self) -> usize {
        self.inner.parallelism().min(self.max_concurrent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        let rate: Rate = "30/min".parse().unwrap();
        assert_eq!(rate.interval(), Duration::from_secs(2));
        assert_eq!(rate.to_string(), "30/min");
        assert_eq!(
            "5/s".parse::<Rate>().unwrap().interval(),
            Duration::from_millis(200)
        );
        for bad in ["30", "0/min", "x/min", "30/fortnight", "-1/s"] {
            let err = bad.parse::<Rate>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
            assert!(err.message().contains(bad), "{err}");
        }
    }

    #[derive(Debug, Default)]
    struct Counting {
        now: AtomicUsize,
        most: AtomicUsize,
        starts: Mutex<Vec<Instant>>,
    }

    #[async_trait]
    impl Transport for Counting {
        async fn send(&self, email: &Email) -> Result<Delivery> {
            self.starts.lock().unwrap().push(Instant::now());
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(Delivery::new(email.recipients(), "ok"))
        }
        fn name(&self) -> &str {
            "counting"
        }
        fn parallelism(&self) -> usize {
            16
        }
    }

    fn email() -> Email {
        Email::new("<1@x.test>", None, &["a@x.test"], b"\r\n".to_vec()).unwrap()
    }

    #[tokio::test]
    async fn concurrency_is_bounded_and_reported() {
        let counting = Arc::new(Counting::default());
        let limited = Arc::new(Limited::new(counting.clone(), None, 3));
        assert_eq!(limited.parallelism(), 3);
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let limited = limited.clone();
                tokio::spawn(async move { limited.send(&email()).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(counting.most.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn sends_are_spaced_at_the_rate() {
        let counting = Arc::new(Counting::default());
        let rate = Rate::new(20, Duration::from_secs(1)).unwrap();
        let limited = Arc::new(Limited::new(counting.clone(), Some(rate), 8));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let limited = limited.clone();
                tokio::spawn(async move { limited.send(&email()).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let mut starts = counting.starts.lock().unwrap().clone();
        starts.sort();
        for pair in starts.windows(2) {
            // 50 ms apart at 20/s; slack for a thread preempted between taking its
            // turn and starting (unlimited, they would start together).
            assert!(
                pair[1].duration_since(pair[0]) >= Duration::from_millis(40),
                "{:?}",
                pair[1].duration_since(pair[0])
            );
        }
    }
}
