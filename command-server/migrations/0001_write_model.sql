-- The write model, the event log and the command log of the command server.
-- Every command runs in one transaction that first locks `event_head`
-- (see docs/decisions/0001-gap-free-positions.md).

CREATE TABLE hotels (
    hotel_id    VARCHAR(64)  NOT NULL PRIMARY KEY,
    name        VARCHAR(200) NOT NULL,
    city        VARCHAR(100) NOT NULL,
    -- Aggregate version: number of events of this hotel.
    version     BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE room_types (
    hotel_id    VARCHAR(64)  NOT NULL,
    code        VARCHAR(16)  NOT NULL,
    name        VARCHAR(200) NOT NULL,
    max_guests  INT          NOT NULL,
    inventory   INT          NOT NULL CHECK (inventory >= 0),
    rate_minor  BIGINT       NOT NULL,
    currency    CHAR(3)      NOT NULL,
    PRIMARY KEY (hotel_id, code)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per room type and night that ever had a booking; a missing row
-- means nothing booked and nobody waiting.
CREATE TABLE room_nights (
    hotel_id    VARCHAR(64)  NOT NULL,
    code        VARCHAR(16)  NOT NULL,
    night       DATE         NOT NULL,
    -- Rooms held by confirmed and checked-in reservations.
    booked      INT          NOT NULL DEFAULT 0 CHECK (booked >= 0),
    -- Waitlisted reservations that include this night.
    waiting     INT          NOT NULL DEFAULT 0 CHECK (waiting >= 0),
    PRIMARY KEY (hotel_id, code, night)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE reservations (
    reservation_id  CHAR(36)     NOT NULL PRIMARY KEY,
    hotel_id        VARCHAR(64)  NOT NULL,
    room_type_code  VARCHAR(16)  NOT NULL,
    check_in        DATE         NOT NULL,
    check_out       DATE         NOT NULL,
    guest_id        VARCHAR(64)  NOT NULL,
    guest_name      VARCHAR(200) NOT NULL,
    guest_email     VARCHAR(254) NOT NULL,
    guests          INT          NOT NULL,
    priority        INT          NOT NULL,
    status          VARCHAR(16)  NOT NULL,
    total_minor     BIGINT       NOT NULL,
    currency        CHAR(3)      NOT NULL,
    -- Position of the booking event: "oldest first" on the waiting list.
    booked_position BIGINT       NOT NULL,
    booked_at_ms    BIGINT       NOT NULL,
    version         BIGINT       NOT NULL,
    KEY waitlist (hotel_id, room_type_code, status, priority, booked_position)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The event log. `position` is assigned by the command transaction from
-- `event_head`, never by AUTO_INCREMENT: gap-free and in commit order.
CREATE TABLE events (
    position          BIGINT       NOT NULL PRIMARY KEY,
    event_id          CHAR(36)     NOT NULL,
    event_type        VARCHAR(32)  NOT NULL,
    aggregate_kind    VARCHAR(16)  NOT NULL,
    aggregate_id      VARCHAR(64)  NOT NULL,
    aggregate_version BIGINT       NOT NULL,
    hotel_id          VARCHAR(64)  NOT NULL,
    command_id        CHAR(36)     NOT NULL,
    correlation_id    VARCHAR(128) NOT NULL,
    occurred_at_ms    BIGINT       NOT NULL,
    -- The hotel.v1.Event message, protobuf-encoded.
    payload           BLOB         NOT NULL,
    UNIQUE KEY event_id (event_id),
    UNIQUE KEY aggregate_version (aggregate_kind, aggregate_id, aggregate_version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row: the last position written. Every command transaction locks it
-- first, which orders commits and numbers their events without gaps.
CREATE TABLE event_head (
    id        TINYINT NOT NULL PRIMARY KEY,
    position  BIGINT  NOT NULL
) ENGINE = InnoDB;

INSERT INTO event_head (id, position) VALUES (1, 0);

-- Every command that changed something (and every submitted one), keyed by
-- the client's command id: the idempotency record and the async queue.
CREATE TABLE commands (
    command_id     CHAR(36)     NOT NULL PRIMARY KEY,
    kind           VARCHAR(32)  NOT NULL,
    -- The request, protobuf-encoded: a retry must be the same command.
    request        BLOB         NOT NULL,
    -- PENDING, SUCCEEDED or FAILED.
    state          VARCHAR(16)  NOT NULL,
    priority       INT          NOT NULL DEFAULT 0,
    -- The reply, protobuf-encoded (SUCCEEDED).
    response       BLOB         NULL,
    error_code     INT          NULL,
    error_message  VARCHAR(1000) NULL,
    position       BIGINT       NOT NULL DEFAULT 0,
    accepted_at_ms BIGINT       NOT NULL,
    finished_at_ms BIGINT       NULL,
    KEY pending (state, priority, accepted_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
