//! Messages as the servers send them, from parts kept encoded: the event
//! stream's here, search answers in [`SearchAvailabilityResponse`].
//!
//! `hotel.v1.SubscribeResponse` as the command server sends it: each event's
//! payload (`EventEnvelope.event`, a `hotel.v1.Event`) is the bytes the log
//! stores, written into the message as they are, not decoded and encoded
//! again for every read (that was a fifth of a replaying command server's
//! CPU, ADR 0014).
//!
//! Only encoding is implemented: the command server's `EventStream`
//! (generated into [`server`] with this type as `Subscribe`'s response) never
//! decodes one. The bytes on the wire decode, with the generated
//! [`pb::SubscribeResponse`], to the same message the decoded event gave:
//! the only difference is that an envelope's field 11 (`event`) comes after
//! its other fields instead of in field order, which protobuf allows.

use prost::{
    DecodeError, Message as _,
    bytes::{Buf, BufMut, Bytes},
    encoding::{
        DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, message,
        skip_field,
    },
};

use crate::pb;

mod search;

pub use search::{RoomTypeFields, SearchAvailabilityResponse, SearchResult};

/// `EventEnvelope.event`'s field number.
const EVENT_FIELD: u32 = 11;

/// The `EventStream` server, generated with [`SubscribeResponse`] as the
/// `Subscribe` stream's message, and the `QueryService` server, with
/// [`SearchAvailabilityResponse`] as `SearchAvailability`'s; every other
/// type is [`pb`]'s.
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/wire/hotel.v1.rs"));
}

/// An event as sent: the envelope's fields, and the event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Every field but `event` (which stays `None`).
    pub head: pb::EventEnvelope,
    /// The encoded `hotel.v1.Event`.
    pub payload: Bytes,
}

impl Envelope {
    /// From a decoded envelope (its event is encoded here).
    pub fn from_decoded(mut envelope: pb::EventEnvelope) -> Self {
        let payload = envelope
            .event
            .take()
            .map(|event| Bytes::from(event.encode_to_vec()))
            .unwrap_or_default();
        Self {
            head: envelope,
            payload,
        }
    }

    /// The envelope as a client decodes it.
    pub fn decoded(&self) -> Result<pb::EventEnvelope, DecodeError> {
        Ok(pb::EventEnvelope {
            event: Some(pb::Event::decode(self.payload.as_ref())?),
            ..self.head.clone()
        })
    }

    /// The envelope's encoded length, as the body of a message field.
    pub fn encoded_len(&self) -> usize {
        self.head.encoded_len() + delimited_len(EVENT_FIELD, self.payload.len())
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        prost::Message::encode_raw(&self.head, buf);
        encode_delimited_head(EVENT_FIELD, self.payload.len(), buf);
        buf.put_slice(&self.payload);
    }
}

/// `hotel.v1.EventBatch`, with events as sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventBatch {
    pub events: Vec<Envelope>,
    pub through_position: i64,
    pub head: i64,
}

impl EventBatch {
    fn encoded_len(&self) -> usize {
        let events: usize = self
            .events
            .iter()
            .map(|event| delimited_len(1, event.encoded_len()))
            .sum();
        events + int64_len(2, self.through_position) + int64_len(3, self.head)
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        for event in &self.events {
            encode_delimited_head(1, event.encoded_len(), buf);
            event.encode_raw(buf);
        }
        encode_int64(2, self.through_position, buf);
        encode_int64(3, self.head, buf);
    }
}

/// `SubscribeResponse.message`.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Events(EventBatch),
    CaughtUp(pb::CaughtUp),
    Heartbeat(pb::Heartbeat),
}

/// `hotel.v1.SubscribeResponse`, for sending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeResponse {
    pub message: Option<Message>,
}

impl prost::Message for SubscribeResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.message {
            Some(Message::Events(batch)) => {
                encode_delimited_head(1, batch.encoded_len(), buf);
                batch.encode_raw(buf);
            }
            Some(Message::CaughtUp(caught_up)) => message::encode(2, caught_up, buf),
            Some(Message::Heartbeat(heartbeat)) => message::encode(3, heartbeat, buf),
            None => {}
        }
    }

    /// Never called: the command server only sends this message.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match &self.message {
            Some(Message::Events(batch)) => delimited_len(1, batch.encoded_len()),
            Some(Message::CaughtUp(caught_up)) => message::encoded_len(2, caught_up),
            Some(Message::Heartbeat(heartbeat)) => message::encoded_len(3, heartbeat),
            None => 0,
        }
    }

    fn clear(&mut self) {
        self.message = None;
    }
}

/// The key and length of a length-delimited field whose body of `len`
/// bytes the caller writes next.
fn encode_delimited_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// The encoded size of a length-delimited field with a body of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// An `int64` field as proto3 writes it: nothing when 0.
fn encode_int64(tag: u32, value: i64, buf: &mut impl BufMut) {
    if value != 0 {
        prost::encoding::int64::encode(tag, &value, buf);
    }
}

fn int64_len(tag: u32, value: i64) -> usize {
    if value == 0 {
        0
    } else {
        prost::encoding::int64::encoded_len(tag, &value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(position: i64, traceparent: &str) -> pb::EventEnvelope {
        pb::EventEnvelope {
            position,
            event_id: format!("event-{position}"),
            aggregate_kind: "reservation".into(),
            aggregate_id: "r1".into(),
            aggregate_version: 2,
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 5_000_000,
            }),
            command_id: "c1".into(),
            correlation_id: "k1".into(),
            hotel_id: "h1".into(),
            event_type: "ReservationCancelled".into(),
            event: Some(pb::Event {
                kind: Some(pb::event::Kind::ReservationCancelled(
                    pb::ReservationCancelled {
                        reservation_id: "r1".into(),
                        hotel_id: "h1".into(),
                        room_type_code: "DBL".into(),
                        check_in: "2030-05-01".into(),
                        check_out: "2030-05-03".into(),
                        previous_status: pb::ReservationStatus::Confirmed.into(),
                        ..Default::default()
                    },
                )),
            }),
            traceparent: traceparent.into(),
        }
    }

    /// What a client decodes from what the server encodes.
    fn round_trip(sent: &SubscribeResponse) -> pb::SubscribeResponse {
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len(), "encoded_len is exact");
        pb::SubscribeResponse::decode(bytes.as_slice()).expect("a client decodes it")
    }

    #[test]
    fn a_batch_decodes_as_the_generated_message_with_its_events() {
        let decoded = vec![
            envelope(7, ""),
            envelope(8, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            pb::EventEnvelope {
                event: Some(pb::Event { kind: None }),
                ..envelope(9, "")
            },
            pb::EventEnvelope {
                position: 0,
                ..Default::default()
            },
        ];
        let sent = SubscribeResponse {
            message: Some(Message::Events(EventBatch {
                events: decoded
                    .iter()
                    .cloned()
                    .map(Envelope::from_decoded)
                    .collect(),
                through_position: 9,
                head: 300,
            })),
        };
        let want = pb::SubscribeResponse {
            message: Some(pb::subscribe_response::Message::Events(pb::EventBatch {
                events: decoded
                    .into_iter()
                    .map(|e| pb::EventEnvelope {
                        // An envelope always goes with an event, if only an empty one.
                        event: Some(e.event.unwrap_or_default()),
                        ..e
                    })
                    .collect(),
                through_position: 9,
                head: 300,
            })),
        };
        assert_eq!(round_trip(&sent), want);
    }

    #[test]
    fn a_payload_goes_out_as_stored_unknown_fields_included() {
        let mut payload = pb::Event {
            kind: envelope(1, "").event.and_then(|e| e.kind),
        }
        .encode_to_vec();
        // A field a newer command server added (number 99, a string).
        encode_key(99, WireType::LengthDelimited, &mut payload);
        encode_varint(3, &mut payload);
        payload.extend_from_slice(b"new");
        let sent = Envelope {
            head: pb::EventEnvelope {
                event: None,
                ..envelope(1, "")
            },
            payload: Bytes::from(payload.clone()),
        };
        let mut body = Vec::new();
        sent.encode_raw(&mut body);
        assert_eq!(body.len(), sent.encoded_len());
        assert!(
            body.ends_with(&payload),
            "the stored bytes are the event field's value, untouched"
        );
        let got = pb::EventEnvelope::decode(body.as_slice()).expect("decodes");
        assert_eq!(got, envelope(1, ""), "this binary skips the unknown field");
        assert_eq!(sent.decoded().expect("decodes"), got);
    }

    #[test]
    fn caught_up_heartbeat_and_empty_encode_as_the_generated_message() {
        for (sent, want) in [
            (
                Some(Message::CaughtUp(pb::CaughtUp {
                    head: 5,
                    through_position: 5,
                })),
                Some(pb::subscribe_response::Message::CaughtUp(pb::CaughtUp {
                    head: 5,
                    through_position: 5,
                })),
            ),
            (
                Some(Message::Heartbeat(pb::Heartbeat {
                    head: 9,
                    time: None,
                    through_position: 3,
                })),
                Some(pb::subscribe_response::Message::Heartbeat(pb::Heartbeat {
                    head: 9,
                    time: None,
                    through_position: 3,
                })),
            ),
            (None, None),
        ] {
            let sent = SubscribeResponse { message: sent };
            let want = pb::SubscribeResponse { message: want };
            assert_eq!(sent.encode_to_vec(), want.encode_to_vec());
            assert_eq!(round_trip(&sent), want);
        }
    }
}
