//! Page tokens: the sort key of the last row of a page, hex-encoded so
//! clients treat it as opaque.

use crate::read_model::reads::SearchKey;

/// Rows per page when the request says 0.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
/// Most rows per page.
pub const MAX_PAGE_SIZE: i32 = 500;

/// The token after a reservation listing page: its last booking position.
pub fn listing_token(last_booked_position: i64) -> String {
    encode(&format!("l1:{last_booked_position}"))
}

/// The booking position a listing token continues before.
pub fn parse_listing_token(token: &str) -> Option<i64> {
    decode(token)?
        .strip_prefix("l1:")?
        .parse()
        .ok()
        .filter(|position| *position > 0)
}

/// The token after a search page: its last result's sort key.
pub fn search_token(key: &SearchKey) -> String {
    encode(&format!(
        "s1:{}:{}:{}",
        key.total_minor, key.hotel_id, key.room_type_code
    ))
}

/// The sort key a search token continues after.
pub fn parse_search_token(token: &str) -> Option<SearchKey> {
    let text = decode(token)?;
    let mut parts = text.strip_prefix("s1:")?.splitn(3, ':');
    let total_minor = parts.next()?.parse().ok()?;
    let hotel_id = parts.next()?.to_owned();
    let room_type_code = parts.next()?.to_owned();
    if hotel_id.is_empty() || room_type_code.is_empty() {
        return None;
    }
    Some(SearchKey {
        total_minor,
        hotel_id,
        room_type_code,
    })
}

fn encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > 512 {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(parse_listing_token(&listing_token(42)), Some(42));
        let key = SearchKey {
            total_minor: 25_900,
            hotel_id: "h-1.a".into(),
            room_type_code: "DBL".into(),
        };
        assert_eq!(parse_search_token(&search_token(&key)), Some(key));
    }

    #[test]
    fn rejects_foreign_or_damaged_tokens() {
        let search = search_token(&SearchKey {
            total_minor: 1,
            hotel_id: "h".into(),
            room_type_code: "S".into(),
        });
        for bad in ["", "zz", "abc", "6c313a", &search, "6c313a2d35"] {
            assert_eq!(parse_listing_token(bad), None, "{bad}");
        }
        assert_eq!(parse_search_token(&listing_token(3)), None);
    }
}
