//! Read-your-writes: waiting until the read model holds `min_position`.
//!
//! The wait sleeps on the projector's checkpoint watch channel: it wakes on
//! commits only, and gives up at the request's deadline.

use std::time::Duration;

use tokio::sync::watch;
use tonic::{Status, metadata::MetadataMap};

/// The wait when a request carries no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// The longest wait, whatever the deadline.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Answer this much before the client's deadline, so the answer (not a
/// deadline error) reaches it.
const REPLY_MARGIN: Duration = Duration::from_millis(20);

/// How long a request may wait for freshness: its `grpc-timeout` less a
/// margin, or [`DEFAULT_WAIT`], at most [`MAX_WAIT`].
pub fn wait_budget(metadata: &MetadataMap) -> Duration {
    let deadline = metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    match deadline {
        Some(timeout) => timeout
            .saturating_sub(REPLY_MARGIN.min(timeout / 10))
            .min(MAX_WAIT),
        None => DEFAULT_WAIT,
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit
/// (`H`ours, `M`inutes, `S`econds, `m`illis, `u`micros, `n`anos).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Waits until the checkpoint reaches `min_position` (at once when it has,
/// or when `min_position` is 0), at most `budget`; else `UNAVAILABLE`
/// naming both positions.
pub async fn wait_for_position(
    checkpoint: &mut watch::Receiver<i64>,
    min_position: i64,
    budget: Duration,
) -> Result<(), Status> {
    if min_position <= 0 || *checkpoint.borrow() >= min_position {
        return Ok(());
    }
    let reached = tokio::time::timeout(
        budget,
        checkpoint.wait_for(|position| *position >= min_position),
    )
    .await
    .is_ok_and(|waited| waited.is_ok());
    match reached {
        true => Ok(()),
        // Timed out, or the projection is gone (shutting down).
        false => {
            let current = *checkpoint.borrow();
            Err(Status::unavailable(format!(
                "the read model is at position {current}, the request needs {min_position}; \
                 not reached within {} ms, retry later",
                budget.as_millis()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_budget_follows_the_deadline_within_bounds() {
        let mut metadata = MetadataMap::new();
        assert_eq!(wait_budget(&metadata), DEFAULT_WAIT);
        metadata.insert("grpc-timeout", "1S".parse().expect("valid header"));
        assert_eq!(wait_budget(&metadata), Duration::from_millis(980));
        metadata.insert("grpc-timeout", "10M".parse().expect("valid header"));
        assert_eq!(wait_budget(&metadata), MAX_WAIT);
    }

    #[tokio::test]
    async fn waits_for_a_commit_and_times_out_without_one() {
        let (sender, mut receiver) = watch::channel(3_i64);
        wait_for_position(&mut receiver, 3, Duration::ZERO)
            .await
            .expect("already there");

        let advance = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            sender.send_replace(5);
            sender
        });
        wait_for_position(&mut receiver, 5, Duration::from_secs(5))
            .await
            .expect("reached during the wait");
        let _sender = advance.await.expect("task");

        let error = wait_for_position(&mut receiver, 6, Duration::from_millis(30))
            .await
            .expect_err("never reached");
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(
            error.message().contains("position 5"),
            "{}",
            error.message()
        );
        assert!(error.message().contains("needs 6"), "{}", error.message());
    }
}
