#!/usr/bin/env node
// A Node.js client of the hotel CQRS services. It loads the contracts from the
// repository's proto/ at run time with @grpc/proto-loader (no generated code)
// and walks through what a client does:
//
//   1. registers a hotel and a room type, and books a room (command server);
//   2. reads the booking back from the query server with min_position = the
//      booking's position: a read of its own write;
//   3. watches the availability of those nights (WatchAvailability), then
//      books a second room and sees the change arrive on the watch;
//   4. sends an invalid BookRoom and decodes the google.rpc.BadRequest from
//      the status details (the grpc-status-details-bin trailer).
//
// It prints one JSON object per line, each with a "step" field, so that a
// program (tests/e2e_js_client.rs) can check what happened.
//
// usage: node hotel_client.js COMMAND_ADDR QUERY_ADDR
//   e.g. node hotel_client.js 127.0.0.1:50051 127.0.0.1:50052
// (plaintext gRPC; run `npm ci` here first)

'use strict';

const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
// google/rpc/status.proto and error_details.proto, as published by Google.
const RPC_PROTO_DIR = path.join(__dirname, 'proto');
// Every call's deadline, and how long to wait for a message on the watch.
const CALL_TIMEOUT_MS = 10_000;

const definition = protoLoader.loadSync(
  ['hotel/v1/commands.proto', 'hotel/v1/queries.proto'],
  {
    includeDirs: [PROTO_DIR],
    keepCase: true, // field names as in the .proto files (snake_case)
    longs: Number, // int64 positions and amounts: far below 2^53 here
    enums: String, // "RESERVATION_STATUS_CONFIRMED" rather than 1
    defaults: true, // zero values are present rather than missing
    oneofs: true,
  },
);
const hotel = grpc.loadPackageDefinition(definition).hotel.v1;

// google.rpc.Status and the detail types, decoded with protobufjs (what
// proto-loader itself is built on). google/protobuf/any.proto is built in.
const rpcProtos = new protobuf.Root();
rpcProtos.resolvePath = (_origin, target) => path.join(RPC_PROTO_DIR, target);
rpcProtos.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], {
  keepCase: true,
});
const RpcStatus = rpcProtos.lookupType('google.rpc.Status');
const BadRequest = rpcProtos.lookupType('google.rpc.BadRequest');

function print(step, fields) {
  process.stdout.write(`${JSON.stringify({ step, ...fields })}\n`);
}

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS);
}

// A unary call as a promise.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

// "YYYY-MM-DD", `days` after today (UTC, as the server counts dates).
function date(days) {
  return new Date(Date.now() + days * 86_400_000).toISOString().slice(0, 10);
}

// The field violations of a google.rpc.BadRequest among an error's details.
function fieldViolations(error) {
  const [bytes] = error.metadata.get('grpc-status-details-bin');
  if (!bytes) {
    return null;
  }
  const status = RpcStatus.decode(bytes);
  const violations = [];
  for (const detail of status.details) {
    if (detail.type_url === 'type.googleapis.com/google.rpc.BadRequest') {
      const badRequest = BadRequest.decode(detail.value);
      for (const violation of badRequest.field_violations) {
        violations.push({ field: violation.field, description: violation.description });
      }
    }
  }
  return { code: status.code, message: status.message, violations };
}

// A stream's messages, one `next()` at a time, each within the timeout.
function reader(stream) {
  const queued = [];
  let waiting = null; // the pending next(): { resolve, reject, timer }
  let failure = null;
  const settle = (outcome, value) => {
    const pending = waiting;
    waiting = null;
    clearTimeout(pending.timer);
    pending[outcome](value);
  };
  stream.on('data', (message) => {
    if (waiting) {
      settle('resolve', message);
    } else {
      queued.push(message);
    }
  });
  const fail = (error) => {
    failure = failure || error;
    if (waiting) {
      settle('reject', failure);
    }
  };
  stream.on('error', fail);
  stream.on('end', () => fail(new Error('the watch ended')));
  return {
    next() {
      if (queued.length > 0) {
        return Promise.resolve(queued.shift());
      }
      if (failure) {
        return Promise.reject(failure);
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => settle('reject', new Error(`no watch message within ${CALL_TIMEOUT_MS} ms`)),
          CALL_TIMEOUT_MS,
        );
        waiting = { resolve, reject, timer };
      });
    },
  };
}

// Rooms booked per night of the one room type a watch reply holds.
function booked(reply) {
  return reply.room_types.flatMap((roomType) => roomType.nights.map((night) => night.booked));
}

async function main(commandAddr, queryAddr) {
  const credentials = grpc.credentials.createInsecure();
  const commands = new hotel.CommandService(commandAddr, credentials);
  const queries = new hotel.QueryService(queryAddr, credentials);

  // A hotel of its own, so the example can run again against the same servers.
  const hotelId = `js-${crypto.randomBytes(4).toString('hex')}`;
  await call(commands, 'RegisterHotel', {
    command_id: crypto.randomUUID(),
    hotel_id: hotelId,
    name: 'Node Inn',
    city: 'Lisbon',
  });
  await call(commands, 'AddRoomType', {
    command_id: crypto.randomUUID(),
    hotel_id: hotelId,
    code: 'DBL',
    name: 'Double',
    max_guests: 2,
    inventory: 3,
    nightly_rate: { amount_minor: 9900, currency: 'EUR' },
  });

  const checkIn = date(3);
  const checkOut = date(5);
  const bookRoom = (guestId) =>
    call(commands, 'BookRoom', {
      command_id: crypto.randomUUID(),
      hotel_id: hotelId,
      room_type_code: 'DBL',
      check_in: checkIn,
      check_out: checkOut,
      guest: { guest_id: guestId, name: 'Node Client', email: `${guestId}@example.com` },
      guests: 2,
    });

  // 1. Book.
  const booking = await bookRoom('js-1');
  print('booked', {
    hotel_id: hotelId,
    reservation_id: booking.reservation_id,
    status: booking.status,
    position: booking.position,
    total_price: booking.total_price,
  });

  // 2. Read it back: min_position makes the query server wait until its read
  // model includes the booking.
  const read = await call(queries, 'GetReservation', {
    reservation_id: booking.reservation_id,
    min_position: booking.position,
  });
  print('read', {
    reservation_id: read.reservation.reservation_id,
    status: read.reservation.status,
    check_in: read.reservation.check_in,
    as_of_position: read.as_of_position,
  });

  // 3. Watch the availability of those nights: the answer now, then a change.
  const watch = queries.WatchAvailability({
    hotel_id: hotelId,
    room_type_code: 'DBL',
    from_date: checkIn,
    to_date: checkOut,
    min_position: booking.position,
  });
  try {
    const messages = reader(watch);
    const first = await messages.next();
    print('watch_first', { booked: booked(first), as_of_position: first.as_of_position });
    const second = await bookRoom('js-2');
    let change = await messages.next();
    // Other writes may come first; the one that counts includes the booking.
    while (change.as_of_position < second.position) {
      change = await messages.next();
    }
    print('watch_change', {
      booked: booked(change),
      as_of_position: change.as_of_position,
      second_position: second.position,
    });
  } finally {
    watch.cancel();
  }

  // 4. An invalid booking (four bad fields): INVALID_ARGUMENT, with one
  // violation per bad field; nothing is written.
  try {
    await call(commands, 'BookRoom', {
      command_id: 'not-a-uuid',
      hotel_id: '',
      room_type_code: 'DBL',
      check_in: checkIn,
      check_out: checkOut,
      guest: { guest_id: 'js-3', name: 'Node Client', email: 'not-an-email' },
      guests: 0,
    });
    print('invalid', { code: 'OK' });
  } catch (error) {
    print('invalid', {
      code: grpc.status[error.code],
      bad_request: fieldViolations(error),
    });
  }

  commands.close();
  queries.close();
}

if (process.argv.length !== 4) {
  process.stderr.write('usage: node hotel_client.js COMMAND_ADDR QUERY_ADDR\n');
  process.exit(2);
}
main(process.argv[2], process.argv[3]).catch((error) => {
  process.stderr.write(`hotel_client: ${error.stack || error}\n`);
  process.exit(1);
});
