//! From request to [`ValidCommand`]: every field checked, every problem
//! reported at once as `INVALID_ARGUMENT` with the field names.

use hotel_common::{dates, pb, validate::Violations};
use prost::Message;
use time::Date;
use tonic::Status;

use super::{Command, CommandKind, ValidCommand};
use crate::domain::command::Precondition;
use crate::domain::{
    Rate, Stay,
    rules::{self, MAX_GUESTS, MAX_INVENTORY, MAX_PRIORITY},
};

/// A command request of the API.
pub trait CommandRequest: Message + Sized {
    fn command_id(&self) -> &str;
    fn correlation_id(&self) -> &str;
    /// Checks the command's own fields (not the common ones). Rules that
    /// depend on the date are checked against `today` when given.
    fn to_command(&self, violations: &mut Violations, today: Option<Date>) -> Option<Command>;
    /// The request's stale-read precondition, for the commands that act on
    /// an aggregate that exists.
    fn precondition(&self) -> Option<&pb::Precondition> {
        None
    }
}

/// Refuses a request larger than `max_bytes` encoded, before anything else
/// looks at it: every accepted request is stored whole in the command log.
pub fn check_size(encoded_len: usize, max_bytes: usize) -> Result<(), Status> {
    if encoded_len <= max_bytes {
        return Ok(());
    }
    let mut violations = Violations::new();
    violations.add(
        "request",
        format!(
            "is {encoded_len} bytes encoded; a command request may be at most {max_bytes} bytes (--max-command-bytes)"
        ),
    );
    violations.finish()
}

/// Validates a request into a command.
pub fn validate<R: CommandRequest>(request: &R) -> Result<ValidCommand, Status> {
    validate_on(request, Some(dates::today_utc()))
}

/// Validates a request, judging date rules against `today` when given.
fn validate_on<R: CommandRequest>(
    request: &R,
    today: Option<Date>,
) -> Result<ValidCommand, Status> {
    let mut violations = Violations::new();
    let command_id = violations.uuid("command_id", request.command_id());
    let correlation_id = violations.correlation_id("correlation_id", request.correlation_id());
    let command = request.to_command(&mut violations, today);
    let precondition = precondition(&mut violations, request.precondition());
    violations.finish()?;
    let (Some(command_id), Some(correlation_id), Some(command)) =
        (command_id, correlation_id, command)
    else {
        return Err(Status::internal("validation passed without a command"));
    };
    let correlation_id = if correlation_id.is_empty() {
        command_id.to_string()
    } else {
        correlation_id
    };
    Ok(ValidCommand {
        command_id,
        correlation_id,
        request: request.encode_to_vec(),
        command,
        precondition,
    })
}

/// Checks a precondition's value: a version or a position, at least 1.
fn precondition(v: &mut Violations, given: Option<&pb::Precondition>) -> Option<Precondition> {
    use pb::precondition::Condition;
    let (field, value, make): (&str, i64, fn(i64) -> Precondition) = match given?.condition? {
        Condition::ExpectedVersion(version) => (
            "precondition.expected_version",
            version,
            Precondition::ExpectedVersion,
        ),
        Condition::UnchangedSincePosition(position) => (
            "precondition.unchanged_since_position",
            position,
            Precondition::UnchangedSince,
        ),
    };
    if value < 1 {
        v.add(
            field,
            format!(
                "must be at least 1 (a version or position read from a query server), got {value}"
            ),
        );
        return None;
    }
    Some(make(value))
}

/// Decodes a stored request of the given kind (the asynchronous queue). It
/// was validated when submitted; the rules that depend on the date are
/// judged when it runs, under the write lock, not here.
pub fn decode_stored(kind: CommandKind, request: &[u8]) -> Result<ValidCommand, Status> {
    fn stored<R: CommandRequest + Default>(request: &[u8]) -> Result<ValidCommand, Status> {
        let request =
            R::decode(request).map_err(|e| Status::internal(format!("stored request: {e}")))?;
        validate_on(&request, None)
    }
    match kind {
        CommandKind::RegisterHotel => stored::<pb::RegisterHotelRequest>(request),
        CommandKind::AddRoomType => stored::<pb::AddRoomTypeRequest>(request),
        CommandKind::SetRoomInventory => stored::<pb::SetRoomInventoryRequest>(request),
        CommandKind::BookRoom => stored::<pb::BookRoomRequest>(request),
        CommandKind::CancelReservation => stored::<pb::CancelReservationRequest>(request),
        CommandKind::CheckIn => stored::<pb::CheckInRequest>(request),
        CommandKind::CheckOut => stored::<pb::CheckOutRequest>(request),
    }
}

macro_rules! common_fields {
    () => {
        fn command_id(&self) -> &str {
            &self.command_id
        }
        fn correlation_id(&self) -> &str {
            &self.correlation_id
        }
    };
    (precondition) => {
        common_fields!();
        fn precondition(&self) -> Option<&pb::Precondition> {
            self.precondition.as_ref()
        }
    };
}

impl CommandRequest for pb::RegisterHotelRequest {
    common_fields!();

    fn to_command(&self, v: &mut Violations, _today: Option<Date>) -> Option<Command> {
        let hotel_id = v.identifier("hotel_id", &self.hotel_id);
        let name = v.text("name", &self.name, 1, 200);
        let city = v.text("city", &self.city, 1, 100);
        Some(Command::RegisterHotel {
            hotel_id: hotel_id?,
            name: name?,
            city: city?,
        })
    }
}

impl CommandRequest for pb::AddRoomTypeRequest {
    common_fields!(precondition);

    fn to_command(&self, v: &mut Violations, _today: Option<Date>) -> Option<Command> {
        let hotel_id = v.identifier("hotel_id", &self.hotel_id);
        let code = v.room_type_code("code", &self.code);
        let name = v.text("name", &self.name, 1, 200);
        let max_guests = v.in_range("max_guests", self.max_guests, 1, MAX_GUESTS);
        let inventory = v.in_range("inventory", self.inventory, 0, MAX_INVENTORY);
        let rate = money(v, "nightly_rate", self.nightly_rate.as_ref());
        Some(Command::AddRoomType {
            hotel_id: hotel_id?,
            code: code?,
            name: name?,
            max_guests: max_guests?,
            inventory: inventory?,
            rate: rate?,
        })
    }
}

impl CommandRequest for pb::SetRoomInventoryRequest {
    common_fields!(precondition);

    fn to_command(&self, v: &mut Violations, _today: Option<Date>) -> Option<Command> {
        let hotel_id = v.identifier("hotel_id", &self.hotel_id);
        let code = v.room_type_code("room_type_code", &self.room_type_code);
        let inventory = v.in_range("inventory", self.inventory, 0, MAX_INVENTORY);
        Some(Command::SetRoomInventory {
            hotel_id: hotel_id?,
            code: code?,
            inventory: inventory?,
        })
    }
}

impl CommandRequest for pb::BookRoomRequest {
    common_fields!();

    fn to_command(&self, v: &mut Violations, today: Option<Date>) -> Option<Command> {
        let hotel_id = v.identifier("hotel_id", &self.hotel_id);
        let code = v.room_type_code("room_type_code", &self.room_type_code);
        let check_in = v.date("check_in", &self.check_in);
        let check_out = v.date("check_out", &self.check_out);
        let stay = match (check_in, check_out) {
            (Some(check_in), Some(check_out)) => {
                let stay = Stay {
                    check_in,
                    check_out,
                };
                let mut problems = rules::stay_length_violations(&stay);
                if let Some(today) = today {
                    problems.extend(rules::stay_date_violations(&stay, today));
                }
                let ok = problems.is_empty();
                for (field, reason) in problems {
                    v.add(field, reason);
                }
                ok.then_some(stay)
            }
            (Some(check_in), None) => {
                // check_out is reported already; check_in's own rules still apply.
                let alone = Stay {
                    check_in,
                    check_out: check_in,
                };
                for (field, reason) in rules::stay_violations(&alone, dates::today_utc()) {
                    if field == "check_in" {
                        v.add(field, reason);
                    }
                }
                None
            }
            _ => None,
        };
        let guest = match &self.guest {
            None => {
                v.add("guest", "is required");
                None
            }
            Some(guest) => {
                let guest_id = v.identifier("guest.guest_id", &guest.guest_id);
                let name = v.text("guest.name", &guest.name, 1, 200);
                let email = v.email("guest.email", &guest.email);
                match (guest_id, name, email) {
                    (Some(guest_id), Some(name), Some(email)) => Some(pb::Guest {
                        guest_id,
                        name,
                        email,
                    }),
                    _ => None,
                }
            }
        };
        let guests = v.in_range("guests", self.guests, 1, MAX_GUESTS);
        let priority = v.in_range("priority", self.priority, 0, MAX_PRIORITY);
        Some(Command::BookRoom {
            hotel_id: hotel_id?,
            code: code?,
            stay: stay?,
            guest: guest?,
            guests: guests?,
            priority: priority?,
        })
    }
}

impl CommandRequest for pb::CancelReservationRequest {
    common_fields!(precondition);

    fn to_command(&self, v: &mut Violations, _today: Option<Date>) -> Option<Command> {
        let reservation_id = v.uuid("reservation_id", &self.reservation_id);
        let reason = v.text("reason", &self.reason, 0, 500);
        Some(Command::CancelReservation {
            reservation_id: reservation_id?.to_string(),
            reason: reason?,
        })
    }
}

impl CommandRequest for pb::CheckInRequest {
    common_fields!(precondition);

    fn to_command(&self, v: &mut Violations, _today: Option<Date>) -> Option<Command> {
        let reservation_id = v.uuid("reservation_id", &self.reservation_id)?;
        Some(Command::CheckIn {
            reservation_id: reservation_id.to_string(),
        })
    }
}

impl CommandRequest for pb::CheckOutRequest {
    common_fields!(precondition);

    fn to_command(&self, v: &mut Violations, _today: Option<Date>) -> Option<Command> {
        let reservation_id = v.uuid("reservation_id", &self.reservation_id)?;
        Some(Command::CheckOut {
            reservation_id: reservation_id.to_string(),
        })
    }
}

fn money(v: &mut Violations, field: &str, money: Option<&pb::Money>) -> Option<Rate> {
    let Some(money) = money else {
        v.add(field, "is required");
        return None;
    };
    let mut ok = true;
    if !(0..=100_000_000_000).contains(&money.amount_minor) {
        v.add(
            format!("{field}.amount_minor"),
            "must be between 0 and 100000000000 minor units",
        );
        ok = false;
    }
    if money.currency.len() != 3 || !money.currency.chars().all(|c| c.is_ascii_uppercase()) {
        v.add(
            format!("{field}.currency"),
            "must be an ISO 4217 code of three upper-case letters, e.g. EUR",
        );
        ok = false;
    }
    ok.then(|| Rate {
        amount_minor: money.amount_minor,
        currency: money.currency.clone(),
    })
}
