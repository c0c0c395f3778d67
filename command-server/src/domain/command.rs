//! What a command asks for and what it answers: the types the handlers
//! build, the store executes and the command log keeps. They live below
//! both, so the store never reaches up into the gRPC layer.

use hotel_common::pb;
use prost::Message;
use uuid::Uuid;

use super::{Rate, Stay};

/// A command whose fields have all been checked.
#[derive(Debug, Clone)]
pub struct ValidCommand {
    pub command_id: Uuid,
    /// Copied into every event; the command id when the client gave none.
    pub correlation_id: String,
    /// The request exactly as received, protobuf-encoded: stored with the
    /// outcome so that a retry can be told apart from a reuse of the id.
    pub request: Vec<u8>,
    pub command: Command,
    /// What the client decided the command on, when it said.
    pub precondition: Option<Precondition>,
}

/// A command's stale-read check (`hotel.v1.Precondition`): it runs only
/// while this still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The aggregate is still at this version.
    ExpectedVersion(i64),
    /// Nothing changed the command's subject after this position.
    UnchangedSince(i64),
}

impl ValidCommand {
    pub fn kind(&self) -> CommandKind {
        self.command.kind()
    }
}

/// What a command asks for.
#[derive(Debug, Clone)]
pub enum Command {
    RegisterHotel {
        hotel_id: String,
        name: String,
        city: String,
    },
    AddRoomType {
        hotel_id: String,
        code: String,
        name: String,
        max_guests: i32,
        inventory: i32,
        rate: Rate,
    },
    SetRoomInventory {
        hotel_id: String,
        code: String,
        inventory: i32,
    },
    BookRoom {
        hotel_id: String,
        code: String,
        stay: Stay,
        guest: pb::Guest,
        guests: i32,
        priority: i32,
    },
    CancelReservation {
        reservation_id: String,
        reason: String,
    },
    CheckIn {
        reservation_id: String,
    },
    CheckOut {
        reservation_id: String,
    },
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::RegisterHotel { .. } => CommandKind::RegisterHotel,
            Self::AddRoomType { .. } => CommandKind::AddRoomType,
            Self::SetRoomInventory { .. } => CommandKind::SetRoomInventory,
            Self::BookRoom { .. } => CommandKind::BookRoom,
            Self::CancelReservation { .. } => CommandKind::CancelReservation,
            Self::CheckIn { .. } => CommandKind::CheckIn,
            Self::CheckOut { .. } => CommandKind::CheckOut,
        }
    }
}

/// The kinds of command, named as their RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    RegisterHotel,
    AddRoomType,
    SetRoomInventory,
    BookRoom,
    CancelReservation,
    CheckIn,
    CheckOut,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RegisterHotel => "RegisterHotel",
            Self::AddRoomType => "AddRoomType",
            Self::SetRoomInventory => "SetRoomInventory",
            Self::BookRoom => "BookRoom",
            Self::CancelReservation => "CancelReservation",
            Self::CheckIn => "CheckIn",
            Self::CheckOut => "CheckOut",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "RegisterHotel" => Self::RegisterHotel,
            "AddRoomType" => Self::AddRoomType,
            "SetRoomInventory" => Self::SetRoomInventory,
            "BookRoom" => Self::BookRoom,
            "CancelReservation" => Self::CancelReservation,
            "CheckIn" => Self::CheckIn,
            "CheckOut" => Self::CheckOut,
            _ => return None,
        })
    }
}

/// The successful reply of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    RegisterHotel(pb::RegisterHotelResponse),
    AddRoomType(pb::AddRoomTypeResponse),
    SetRoomInventory(pb::SetRoomInventoryResponse),
    BookRoom(pb::BookRoomResponse),
    CancelReservation(pb::CancelReservationResponse),
    CheckIn(pb::CheckInResponse),
    CheckOut(pb::CheckOutResponse),
}

impl Reply {
    /// Position of the command's last event.
    pub fn position(&self) -> i64 {
        match self {
            Self::RegisterHotel(r) => r.position,
            Self::AddRoomType(r) => r.position,
            Self::SetRoomInventory(r) => r.position,
            Self::BookRoom(r) => r.position,
            Self::CancelReservation(r) => r.position,
            Self::CheckIn(r) => r.position,
            Self::CheckOut(r) => r.position,
        }
    }

    /// Marks the reply as a repeat of an earlier outcome.
    pub fn mark_replayed(&mut self) {
        match self {
            Self::RegisterHotel(r) => r.replayed = true,
            Self::AddRoomType(r) => r.replayed = true,
            Self::SetRoomInventory(r) => r.replayed = true,
            Self::BookRoom(r) => r.replayed = true,
            Self::CancelReservation(r) => r.replayed = true,
            Self::CheckIn(r) => r.replayed = true,
            Self::CheckOut(r) => r.replayed = true,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::RegisterHotel(r) => r.encode_to_vec(),
            Self::AddRoomType(r) => r.encode_to_vec(),
            Self::SetRoomInventory(r) => r.encode_to_vec(),
            Self::BookRoom(r) => r.encode_to_vec(),
            Self::CancelReservation(r) => r.encode_to_vec(),
            Self::CheckIn(r) => r.encode_to_vec(),
            Self::CheckOut(r) => r.encode_to_vec(),
        }
    }

    pub fn decode(kind: CommandKind, bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match kind {
            CommandKind::RegisterHotel => Self::RegisterHotel(Message::decode(bytes)?),
            CommandKind::AddRoomType => Self::AddRoomType(Message::decode(bytes)?),
            CommandKind::SetRoomInventory => Self::SetRoomInventory(Message::decode(bytes)?),
            CommandKind::BookRoom => Self::BookRoom(Message::decode(bytes)?),
            CommandKind::CancelReservation => Self::CancelReservation(Message::decode(bytes)?),
            CommandKind::CheckIn => Self::CheckIn(Message::decode(bytes)?),
            CommandKind::CheckOut => Self::CheckOut(Message::decode(bytes)?),
        })
    }

    /// The `result` of a `GetCommandStatusResponse`.
    pub fn into_status_result(self) -> pb::get_command_status_response::Result {
        use pb::get_command_status_response::Result as R;
        match self {
            Self::RegisterHotel(r) => R::RegisterHotel(r),
            Self::AddRoomType(r) => R::AddRoomType(r),
            Self::SetRoomInventory(r) => R::SetRoomInventory(r),
            Self::BookRoom(r) => R::BookRoom(r),
            Self::CancelReservation(r) => R::CancelReservation(r),
            Self::CheckIn(r) => R::CheckIn(r),
            Self::CheckOut(r) => R::CheckOut(r),
        }
    }
}
