"""Read, decide, command: a Python client that decides a check-in on a
reservation it read from a query server, sends the command with the version
it read (Precondition.expected_version), and, when another clerk changed the
reservation in between, decodes the STALE_READ refusal from the status
details (google.rpc.ErrorInfo), reads again at the position it names and
decides again. Prints what it saw as JSON.

usage: stale_read.py COMMAND_ADDR QUERY_ADDR"""

import json
import sys
import uuid
from datetime import date, timedelta

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hotel.v1 import (commands_pb2, commands_pb2_grpc, queries_pb2, queries_pb2_grpc,
                      types_pb2)


def new_id() -> str:
    return str(uuid.uuid4())


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo among the status details of a failed call."""
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def main(command_addr: str, query_addr: str) -> None:
    commands = commands_pb2_grpc.CommandServiceStub(grpc.insecure_channel(command_addr))
    queries = queries_pb2_grpc.QueryServiceStub(grpc.insecure_channel(query_addr))
    hotel_id = "py-stale-" + new_id()[:8]  # a new hotel on every run
    commands.RegisterHotel(commands_pb2.RegisterHotelRequest(
        command_id=new_id(), hotel_id=hotel_id, name="Python Inn", city="Porto"))
    commands.AddRoomType(commands_pb2.AddRoomTypeRequest(
        command_id=new_id(), hotel_id=hotel_id, code="DBL", name="Double",
        max_guests=2, inventory=3,
        nightly_rate=types_pb2.Money(amount_minor=9900, currency="EUR")))
    today = date.today()
    booked = commands.BookRoom(commands_pb2.BookRoomRequest(
        command_id=new_id(), hotel_id=hotel_id, room_type_code="DBL",
        check_in=today.isoformat(), check_out=(today + timedelta(days=2)).isoformat(),
        guest=types_pb2.Guest(guest_id="py", name="Py Thon", email="py@example.com"),
        guests=1))

    # Read (your own write) and decide on what was read.
    read = queries.GetReservation(queries_pb2.GetReservationRequest(
        reservation_id=booked.reservation_id, min_position=booked.position))
    decided_on = read.reservation.version

    # Meanwhile another clerk cancels it.
    cancelled = commands.CancelReservation(commands_pb2.CancelReservationRequest(
        command_id=new_id(), reservation_id=booked.reservation_id, reason="guest called"))

    # The check-in decided on the old read is refused, and says where to read.
    try:
        commands.CheckIn(commands_pb2.CheckInRequest(
            command_id=new_id(), reservation_id=booked.reservation_id,
            precondition=commands_pb2.Precondition(expected_version=decided_on)))
        refusal = {"code": "OK"}
    except grpc.RpcError as error:
        info = error_info(error)
        refusal = {
            "code": error.code().name,
            "reason": info.reason,
            "domain": info.domain,
            "subject": info.metadata["subject"],
            "current_version": int(info.metadata["current_version"]),
            "changed_position": int(info.metadata["changed_position"]),
        }

    # Read again where the refusal points, and decide again.
    reread = queries.GetReservation(queries_pb2.GetReservationRequest(
        reservation_id=booked.reservation_id,
        min_position=refusal.get("changed_position", 0)))

    # An inventory change decided on an availability read: accepted while
    # nothing moved since.
    availability = queries.GetAvailability(queries_pb2.GetAvailabilityRequest(
        hotel_id=hotel_id, room_type_code="DBL", from_date=today.isoformat(),
        to_date=(today + timedelta(days=2)).isoformat(), min_position=cancelled.position))
    changed = commands.SetRoomInventory(commands_pb2.SetRoomInventoryRequest(
        command_id=new_id(), hotel_id=hotel_id, room_type_code="DBL", inventory=5,
        precondition=commands_pb2.Precondition(
            unchanged_since_position=availability.as_of_position)))

    print(json.dumps({
        "reservation_id": booked.reservation_id,
        "decided_on_version": decided_on,
        "cancel_position": cancelled.position,
        "refusal": refusal,
        "reread_status": types_pb2.ReservationStatus.Name(reread.reservation.status),
        "reread_version": reread.reservation.version,
        "reread_as_of": reread.as_of_position,
        "hotel_version": availability.hotel_version,
        "inventory_position": changed.position,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
