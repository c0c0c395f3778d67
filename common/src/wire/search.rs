//! `hotel.v1.SearchAvailabilityResponse` as the query server sends it: of
//! each result, the fields its room type fixes (hotel, names, city, guests,
//! nightly rate, currency) are encoded once, when the in-memory
//! availability indexes the room type, and copied into every answer that
//! lists it; only the free rooms and the stay's total are encoded per
//! search. Building, encoding and freeing twenty results of seven strings
//! each was a sixth of a search's CPU.
//!
//! Clients see the generated message: a result's fields come in another
//! order (free rooms and total price last), which protobuf allows.

use prost::{
    DecodeError, Message as _,
    bytes::{Buf, BufMut, Bytes},
    encoding::{DecodeContext, WireType, int32, int64, message, skip_field, string},
};

use super::{delimited_len, encode_delimited_head, encode_int64, int64_len};
use crate::pb;

/// `SearchResult.free_rooms`.
const FREE_ROOMS: u32 = 7;
/// `SearchResult.total_price`.
const TOTAL_PRICE: u32 = 9;
/// `Money.amount_minor`.
const AMOUNT_MINOR: u32 = 1;

/// The fields of a `hotel.v1.SearchResult` that its room type fixes,
/// encoded: every field but `free_rooms` and `total_price`, then the
/// `currency` field of a `Money`, for the total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomTypeFields {
    bytes: Bytes,
    /// Where the total's `currency` field starts in `bytes`.
    currency_at: usize,
}

impl RoomTypeFields {
    /// The fixed fields of `result` (its `free_rooms` and `total_price`
    /// are left out), with `currency` for the stay's total.
    pub fn new(result: &pb::SearchResult, currency: &str) -> Self {
        let fixed = pb::SearchResult {
            free_rooms: 0,
            total_price: None,
            ..result.clone()
        };
        let mut bytes = Vec::with_capacity(fixed.encoded_len() + currency.len() + 2);
        fixed.encode_raw(&mut bytes);
        let currency_at = bytes.len();
        if !currency.is_empty() {
            string::encode(2, &currency.to_owned(), &mut bytes);
        }
        Self {
            bytes: Bytes::from(bytes),
            currency_at,
        }
    }

    fn fixed(&self) -> &[u8] {
        &self.bytes[..self.currency_at]
    }

    fn currency(&self) -> &[u8] {
        &self.bytes[self.currency_at..]
    }
}

/// A `hotel.v1.SearchResult` as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResult {
    /// What the room type fixes (shared, not copied, between answers).
    pub room_type: RoomTypeFields,
    pub free_rooms: i32,
    /// The stay's total, in the room type's currency.
    pub total_minor: i64,
}

impl SearchResult {
    /// From a decoded result (its room type's fields are encoded here). A
    /// result without a total goes out with an empty one; the query server
    /// always gives one.
    pub fn from_decoded(result: &pb::SearchResult) -> Self {
        let total = result.total_price.clone().unwrap_or_default();
        Self {
            room_type: RoomTypeFields::new(result, &total.currency),
            free_rooms: result.free_rooms,
            total_minor: total.amount_minor,
        }
    }

    /// The result as a client decodes it.
    pub fn decoded(&self) -> Result<pb::SearchResult, DecodeError> {
        let mut body = Vec::with_capacity(self.body_len());
        self.encode_body(&mut body);
        pb::SearchResult::decode(body.as_slice())
    }

    fn total_len(&self) -> usize {
        int64_len(AMOUNT_MINOR, self.total_minor) + self.room_type.currency().len()
    }

    fn body_len(&self) -> usize {
        self.room_type.fixed().len()
            + int32_len(FREE_ROOMS, self.free_rooms)
            + delimited_len(TOTAL_PRICE, self.total_len())
    }

    fn encode_body(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.room_type.fixed());
        if self.free_rooms != 0 {
            int32::encode(FREE_ROOMS, &self.free_rooms, buf);
        }
        encode_delimited_head(TOTAL_PRICE, self.total_len(), buf);
        encode_int64(AMOUNT_MINOR, self.total_minor, buf);
        buf.put_slice(self.room_type.currency());
    }
}

/// `hotel.v1.SearchAvailabilityResponse`, for sending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchAvailabilityResponse {
    pub results: Vec<SearchResult>,
    pub next_page_token: String,
    pub as_of_position: i64,
}

impl SearchAvailabilityResponse {
    /// The response as a client decodes it.
    pub fn decoded(&self) -> Result<pb::SearchAvailabilityResponse, DecodeError> {
        pb::SearchAvailabilityResponse::decode(self.encode_to_vec().as_slice())
    }
}

impl prost::Message for SearchAvailabilityResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for result in &self.results {
            encode_delimited_head(1, result.body_len(), buf);
            result.encode_body(buf);
        }
        if !self.next_page_token.is_empty() {
            string::encode(2, &self.next_page_token, buf);
        }
        encode_int64(15, self.as_of_position, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                let mut result = pb::SearchResult::default();
                message::merge(wire_type, &mut result, buf, ctx)?;
                self.results.push(SearchResult::from_decoded(&result));
                Ok(())
            }
            2 => string::merge(wire_type, &mut self.next_page_token, buf, ctx),
            15 => int64::merge(wire_type, &mut self.as_of_position, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let results: usize = self
            .results
            .iter()
            .map(|result| delimited_len(1, result.body_len()))
            .sum();
        let token = if self.next_page_token.is_empty() {
            0
        } else {
            string::encoded_len(2, &self.next_page_token)
        };
        results + token + int64_len(15, self.as_of_position)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// An `int32` field as proto3 writes it: nothing when 0.
fn int32_len(tag: u32, value: i32) -> usize {
    if value == 0 {
        0
    } else {
        int32::encoded_len(tag, &value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(hotel: &str, free_rooms: i32, total_minor: i64, currency: &str) -> pb::SearchResult {
        pb::SearchResult {
            hotel_id: hotel.into(),
            hotel_name: format!("Hotel {hotel} \u{e9}\u{1F3E8}"),
            city: "Lisboa".into(),
            room_type_code: "DBL".into(),
            room_type_name: "Double".into(),
            max_guests: 2,
            free_rooms,
            nightly_rate: Some(pb::Money {
                amount_minor: 12_000,
                currency: currency.into(),
            }),
            total_price: Some(pb::Money {
                amount_minor: total_minor,
                currency: currency.into(),
            }),
        }
    }

    #[test]
    fn a_response_decodes_as_the_generated_message() {
        let decoded = pb::SearchAvailabilityResponse {
            results: vec![
                result("h1", 3, 36_000, "EUR"),
                // Zeros and empty strings, which proto3 leaves out.
                result("", 0, 0, ""),
                pb::SearchResult {
                    nightly_rate: None,
                    ..result("h2", 1, 1 << 40, "USD")
                },
                pb::SearchResult {
                    free_rooms: -1,
                    ..result("h3", i32::MAX, -5, "GBP")
                },
            ],
            next_page_token: "token".into(),
            as_of_position: 1234,
        };
        let sent = SearchAvailabilityResponse {
            results: decoded
                .results
                .iter()
                .map(SearchResult::from_decoded)
                .collect(),
            next_page_token: decoded.next_page_token.clone(),
            as_of_position: decoded.as_of_position,
        };
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len(), "encoded_len is exact");
        assert_eq!(
            pb::SearchAvailabilityResponse::decode(bytes.as_slice()).expect("a client decodes it"),
            decoded
        );
        assert_eq!(sent.decoded().expect("decodes"), decoded);
        // And this type reads what the generated one writes.
        let back = SearchAvailabilityResponse::decode(decoded.encode_to_vec().as_slice())
            .expect("decodes");
        assert_eq!(back.decoded().expect("decodes"), decoded);
    }

    #[test]
    fn one_room_type_s_fields_serve_every_stay() {
        let fields = RoomTypeFields::new(&result("h1", 9, 9, "EUR"), "EUR");
        for (free_rooms, total_minor) in [(1, 12_000), (50, 36_000), (2, 0)] {
            let sent = SearchResult {
                room_type: fields.clone(),
                free_rooms,
                total_minor,
            };
            assert_eq!(
                sent.decoded().expect("decodes"),
                result("h1", free_rooms, total_minor, "EUR")
            );
        }
        let empty = SearchAvailabilityResponse::default();
        assert!(empty.encode_to_vec().is_empty());
        assert_eq!(
            empty.decoded().expect("decodes"),
            pb::SearchAvailabilityResponse::default()
        );
    }
}
