"""A Python client of the command server, generated from proto/ with
grpcio-tools: registers a hotel, adds a room type, books a room, retries the
booking with the same command id, and prints the replies as JSON.

Generate the stubs first (see examples/README.md), then:

    PYTHONPATH=generated python3 examples/python/book_room.py 127.0.0.1:50051

It registers a hotel of its own each time, so it can run again against the
same server. tests/e2e_python_client.rs runs it against a fresh command server
and checks what it prints."""

import json
import sys
import uuid
from datetime import date, timedelta

import grpc

from hotel.v1 import commands_pb2, commands_pb2_grpc, types_pb2


def main(address: str) -> None:
    channel = grpc.insecure_channel(address)
    commands = commands_pb2_grpc.CommandServiceStub(channel)
    hotel_id = f"py-{uuid.uuid4().hex[:8]}"
    commands.RegisterHotel(commands_pb2.RegisterHotelRequest(
        command_id=str(uuid.uuid4()), hotel_id=hotel_id, name="Python Inn", city="Porto"))
    commands.AddRoomType(commands_pb2.AddRoomTypeRequest(
        command_id=str(uuid.uuid4()), hotel_id=hotel_id, code="DBL", name="Double",
        max_guests=2, inventory=1,
        nightly_rate=types_pb2.Money(amount_minor=9900, currency="EUR")))
    check_in = date.today() + timedelta(days=3)
    request = commands_pb2.BookRoomRequest(
        command_id=str(uuid.uuid4()), hotel_id=hotel_id, room_type_code="DBL",
        check_in=check_in.isoformat(), check_out=(check_in + timedelta(days=2)).isoformat(),
        guest=types_pb2.Guest(guest_id="py", name="Py Thon", email="py@example.com"),
        guests=2)
    first = commands.BookRoom(request)
    retry = commands.BookRoom(request)
    try:
        commands.BookRoom(commands_pb2.BookRoomRequest(command_id="not-a-uuid"))
        invalid = "accepted"
    except grpc.RpcError as error:
        invalid = error.code().name
    print(json.dumps({
        "reservation_id": first.reservation_id,
        "status": types_pb2.ReservationStatus.Name(first.status),
        "position": first.position,
        "retry_reservation_id": retry.reservation_id,
        "retry_replayed": retry.replayed,
        "invalid": invalid,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
