//! Request validation: every field is checked, every problem is collected,
//! and the caller gets one `INVALID_ARGUMENT` whose `google.rpc.BadRequest`
//! details name each bad field and why.

use time::Date;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::dates;

/// Longest client-chosen identifier (hotel id, guest id).
pub const MAX_ID_LEN: usize = 64;
/// Longest display name.
pub const MAX_NAME_LEN: usize = 200;
/// Most items a repeated field of any request may hold.
pub const MAX_REPEATED_ITEMS: usize = 100;
/// Most violations one reply lists; the rest are counted in one last
/// "and N more" entry, so a request full of bad items gets a small reply.
pub const MAX_REPORTED_VIOLATIONS: usize = 8;
/// Longest field name a violation shows, in bytes.
const MAX_FIELD_BYTES: usize = 64;
/// Longest reason a violation shows, in bytes: a reason that echoes a huge
/// value is cut here.
const MAX_REASON_BYTES: usize = 200;
/// Most bytes of field names and reasons one reply lists. The message
/// repeats them (percent-encoded: up to 3 bytes each) and the details hold
/// them again (base64), so the whole status stays under 6 KiB of metadata,
/// inside the 8 KiB that clients and proxies accept.
const MAX_LISTED_BYTES: usize = 1280;

/// Collects field violations while a request is parsed.
#[derive(Debug, Default)]
pub struct Violations {
    /// (field, reason) in the order found, at most [`MAX_REPORTED_VIOLATIONS`].
    list: Vec<(String, String)>,
    /// Bytes of field names and reasons listed so far.
    listed_bytes: usize,
    /// Violations found beyond those listed.
    more: usize,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid because of `reason`. Beyond
    /// [`MAX_REPORTED_VIOLATIONS`] only counts; long texts are cut short.
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        if self.list.len() >= MAX_REPORTED_VIOLATIONS || self.listed_bytes >= MAX_LISTED_BYTES {
            self.more += 1;
            return;
        }
        let room = MAX_LISTED_BYTES - self.listed_bytes;
        let field = shorten(field.into(), MAX_FIELD_BYTES.min(room));
        let reason = shorten(
            reason.into(),
            MAX_REASON_BYTES.min(room.saturating_sub(field.len()).max(8)),
        );
        self.listed_bytes += field.len() + reason.len();
        self.list.push((field, reason));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// A repeated field of `len` items: `false` (and a violation) when it
    /// holds more than [`MAX_REPEATED_ITEMS`], so the caller skips checking
    /// each item.
    pub fn item_count(&mut self, field: &str, len: usize) -> bool {
        if len > MAX_REPEATED_ITEMS {
            self.add(
                field,
                format!("may hold at most {MAX_REPEATED_ITEMS} items, got {len}"),
            );
            return false;
        }
        true
    }

    /// `Ok` when nothing was recorded, else `INVALID_ARGUMENT` naming every
    /// field (the first [`MAX_REPORTED_VIOLATIONS`] of them, then a count).
    pub fn finish(mut self) -> Result<(), Status> {
        if self.list.is_empty() {
            return Ok(());
        }
        if self.more > 0 {
            self.list.push((
                "...".to_owned(),
                format!("and {} more violations", self.more),
            ));
        }
        let message = self
            .list
            .iter()
            .map(|(field, reason)| format!("{field}: {reason}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = ErrorDetails::new();
        for (field, reason) in &self.list {
            details.add_bad_request_violation(field.clone(), reason.clone());
        }
        Err(Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {message}"),
            details,
        ))
    }

    /// A UUID in its canonical hyphenated form.
    pub fn uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        match Uuid::try_parse(value) {
            Ok(id) if value.len() == 36 => Some(id),
            _ => {
                self.add(
                    field,
                    "must be a UUID such as 7f3e9c1a-0b5d-4e2a-9c61-2d8f4b7a1e05",
                );
                None
            }
        }
    }

    /// A client-chosen identifier: 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub fn identifier(&mut self, field: &str, value: &str) -> Option<String> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if value.len() > MAX_ID_LEN || !value.chars().all(allowed) {
            self.add(
                field,
                "must be 1 to 64 characters of letters, digits, '.', '_' or '-'",
            );
            return None;
        }
        Some(value.to_owned())
    }

    /// A room type code: 1 to 16 characters of `[A-Z0-9_]`.
    pub fn room_type_code(&mut self, field: &str, value: &str) -> Option<String> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        let allowed = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
        if value.len() > 16 || !value.chars().all(allowed) {
            self.add(
                field,
                "must be 1 to 16 characters of A-Z, 0-9 or '_', e.g. DBL",
            );
            return None;
        }
        Some(value.to_owned())
    }

    /// Human text of `min..=max` characters without control characters,
    /// trimmed of surrounding white space.
    pub fn text(&mut self, field: &str, value: &str, min: usize, max: usize) -> Option<String> {
        let trimmed = value.trim();
        let length = trimmed.chars().count();
        if length == 0 && min > 0 {
            self.add(field, "is required");
            return None;
        }
        if length < min || length > max {
            self.add(field, format!("must be {min} to {max} characters long"));
            return None;
        }
        if trimmed.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
            return None;
        }
        Some(trimmed.to_owned())
    }

    /// An e-mail address of the form `local@domain.tld`, 3 to 254 characters.
    pub fn email(&mut self, field: &str, value: &str) -> Option<String> {
        let value = value.trim();
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        let well_formed = value.len() <= 254
            && value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && local.len() <= 64
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            })
            && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            self.add(field, "must be an e-mail address such as ana@example.com");
            return None;
        }
        Some(value.to_owned())
    }

    /// A calendar date `YYYY-MM-DD`.
    pub fn date(&mut self, field: &str, value: &str) -> Option<Date> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        let date = dates::parse(value);
        if date.is_none() {
            self.add(field, "must be a date written YYYY-MM-DD");
        }
        date
    }

    /// An integer in `min..=max`.
    pub fn in_range(&mut self, field: &str, value: i32, min: i32, max: i32) -> Option<i32> {
        if value < min || value > max {
            self.add(
                field,
                format!("must be between {min} and {max}, got {value}"),
            );
            return None;
        }
        Some(value)
    }

    /// An optional correlation id: up to 128 printable characters.
    pub fn correlation_id(&mut self, field: &str, value: &str) -> Option<String> {
        if value.len() > 128 || value.chars().any(char::is_control) {
            self.add(
                field,
                "must be at most 128 characters without control characters",
            );
            return None;
        }
        Some(value.to_owned())
    }

    /// A position used as a lower bound: zero or more.
    pub fn position(&mut self, field: &str, value: i64) -> Option<i64> {
        if value < 0 {
            self.add(field, format!("must not be negative, got {value}"));
            return None;
        }
        Some(value)
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with an
/// ellipsis when something was cut.
fn shorten(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

/// The field violations of an `INVALID_ARGUMENT` status, for tests and clients.
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation_into_one_status() {
        let mut v = Violations::new();
        assert!(v.uuid("command_id", "not-a-uuid").is_none());
        assert!(v.identifier("hotel_id", "").is_none());
        assert!(v.email("guest.email", "nobody").is_none());
        assert!(v.in_range("inventory", -1, 0, 10_000).is_none());
        let status = v.finish().expect_err("four violations");
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = field_violations(&status)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            ["command_id", "hotel_id", "guest.email", "inventory"]
        );
        assert!(
            status
                .message()
                .contains("inventory: must be between 0 and 10000")
        );
    }

    #[test]
    fn accepts_good_values() {
        let mut v = Violations::new();
        assert!(
            v.uuid("id", "7f3e9c1a-0b5d-4e2a-9c61-2d8f4b7a1e05")
                .is_some()
        );
        assert_eq!(
            v.identifier("hotel_id", "grand-lisboa_1").as_deref(),
            Some("grand-lisboa_1")
        );
        assert_eq!(v.room_type_code("code", "DBL").as_deref(), Some("DBL"));
        assert_eq!(
            v.text("name", "  Ana Silva ", 1, 200).as_deref(),
            Some("Ana Silva")
        );
        assert!(v.email("email", "ana@example.com").is_some());
        assert!(v.date("check_in", "2027-01-31").is_some());
        assert!(v.finish().is_ok());
    }

    #[test]
    fn rejects_absurd_strings() {
        let mut v = Violations::new();
        assert!(v.text("name", &"x".repeat(201), 1, 200).is_none());
        assert!(v.text("name", "bell\u{7}", 1, 200).is_none());
        assert!(v.identifier("guest_id", &"g".repeat(65)).is_none());
        assert!(v.identifier("guest_id", "has space").is_none());
        assert!(v.room_type_code("code", "dbl").is_none());
        assert!(v.email("email", "a@b@c.com").is_none());
        assert!(v.uuid("id", "7f3e9c1a0b5d4e2a9c612d8f4b7a1e05").is_none());
        assert_eq!(field_violations(&v.finish().expect_err("invalid")).len(), 7);
    }

    /// The size of the status as a server sends it: every metadata entry.
    fn metadata_bytes(status: &Status) -> usize {
        let mut headers = tonic::codegen::http::HeaderMap::new();
        status.add_header(&mut headers).expect("valid headers");
        headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum()
    }

    #[test]
    fn many_violations_are_listed_up_to_a_cap_then_counted() {
        let mut v = Violations::new();
        for index in 0..1_000_000 {
            v.add(
                format!("statuses[{index}]"),
                "99 is not a reservation status",
            );
        }
        let status = v.finish().expect_err("invalid");
        let violations = field_violations(&status);
        assert_eq!(violations.len(), MAX_REPORTED_VIOLATIONS + 1);
        assert_eq!(violations[0].0, "statuses[0]");
        let (_, last) = violations.last().expect("a summary");
        assert!(
            last.contains(&format!("and {} more", 1_000_000 - MAX_REPORTED_VIOLATIONS)),
            "{last}"
        );
        assert!(metadata_bytes(&status) < 8 * 1024);
    }

    #[test]
    fn echoed_values_are_cut_short_and_the_reply_stays_small() {
        let mut v = Violations::new();
        // Multi-byte characters percent-encode to three times their size.
        let huge = "é".repeat(450_000);
        for index in 0..20 {
            v.add(
                format!("filter.event_types[{index}]{huge}"),
                format!("unknown event type {huge:?}"),
            );
        }
        let status = v.finish().expect_err("invalid");
        for (field, reason) in field_violations(&status) {
            assert!(field.len() <= MAX_FIELD_BYTES, "{field}");
            assert!(reason.len() <= MAX_REASON_BYTES, "{reason}");
        }
        assert!(status.message().len() < 4 * 1024);
        let bytes = metadata_bytes(&status);
        assert!(bytes < 8 * 1024, "{bytes} bytes of metadata");
    }

    #[test]
    fn a_repeated_field_over_the_cap_is_one_violation() {
        let mut v = Violations::new();
        assert!(v.item_count("statuses", MAX_REPEATED_ITEMS));
        assert!(!v.item_count("statuses", 1_000_000));
        let violations = field_violations(&v.finish().expect_err("invalid"));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].0, "statuses");
        assert!(
            violations[0].1.contains("at most 100 items"),
            "{violations:?}"
        );
    }

    #[test]
    fn shorten_respects_character_boundaries() {
        assert_eq!(shorten("abc".to_owned(), 3), "abc");
        let cut = shorten("ééééé".to_owned(), 6);
        assert!(cut.len() <= 6 && cut.ends_with('…'), "{cut}");
    }
}
