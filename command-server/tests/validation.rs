//! Bad input gets INVALID_ARGUMENT naming the field, and writes nothing.

mod support;

use hotel_common::{pb, validate::field_violations};
use support::*;
use tonic::{Code, Status};

/// One bad request and the field it must be blamed on.
struct Case {
    name: &'static str,
    field: &'static str,
    call: Call,
}

enum Call {
    Book(pb::BookRoomRequest),
    Register(pb::RegisterHotelRequest),
    AddRoomType(pb::AddRoomTypeRequest),
    Inventory(pb::SetRoomInventoryRequest),
    Cancel(pb::CancelReservationRequest),
}

fn book(edit: impl FnOnce(&mut pb::BookRoomRequest)) -> Call {
    let mut request = booking("h1", "DBL", 1, 3, "ana");
    edit(&mut request);
    Call::Book(request)
}

fn guest(edit: impl FnOnce(&mut pb::Guest)) -> Call {
    book(|r| edit(r.guest.as_mut().expect("booking has a guest")))
}

fn cases() -> Vec<Case> {
    let long = "x".repeat(10_000);
    vec![
        Case {
            name: "empty command id",
            field: "command_id",
            call: book(|r| r.command_id.clear()),
        },
        Case {
            name: "malformed command id",
            field: "command_id",
            call: book(|r| r.command_id = "1234-not-a-uuid".into()),
        },
        Case {
            name: "empty hotel id",
            field: "hotel_id",
            call: book(|r| r.hotel_id.clear()),
        },
        Case {
            name: "hotel id with spaces",
            field: "hotel_id",
            call: book(|r| r.hotel_id = "my hotel".into()),
        },
        Case {
            name: "lower-case room type",
            field: "room_type_code",
            call: book(|r| r.room_type_code = "dbl".into()),
        },
        Case {
            name: "malformed date",
            field: "check_in",
            call: book(|r| r.check_in = "2027-13-01".into()),
        },
        Case {
            name: "check-out before check-in",
            field: "check_out",
            call: book(|r| {
                r.check_in = day(5);
                r.check_out = day(3);
            }),
        },
        Case {
            name: "zero nights",
            field: "check_out",
            call: book(|r| {
                r.check_in = day(5);
                r.check_out = day(5);
            }),
        },
        Case {
            name: "31 nights",
            field: "check_out",
            call: book(|r| {
                r.check_in = day(1);
                r.check_out = day(32);
            }),
        },
        Case {
            name: "in the past",
            field: "check_in",
            call: book(|r| {
                r.check_in = day(-2);
                r.check_out = day(1);
            }),
        },
        Case {
            name: "over two years ahead",
            field: "check_in",
            call: book(|r| {
                r.check_in = day(731);
                r.check_out = day(733);
            }),
        },
        Case {
            name: "no guest",
            field: "guest",
            call: book(|r| r.guest = None),
        },
        Case {
            name: "absurd guest name",
            field: "guest.name",
            call: guest(|g| g.name = long.clone()),
        },
        Case {
            name: "control characters in name",
            field: "guest.name",
            call: guest(|g| g.name = "Ana\u{0}Silva".into()),
        },
        Case {
            name: "malformed email",
            field: "guest.email",
            call: guest(|g| g.email = "ana.example.com".into()),
        },
        Case {
            name: "zero guests",
            field: "guests",
            call: book(|r| r.guests = 0),
        },
        Case {
            name: "more guests than the room holds",
            field: "guests",
            call: book(|r| r.guests = 3),
        },
        Case {
            name: "negative priority",
            field: "priority",
            call: book(|r| r.priority = -1),
        },
        Case {
            name: "absurd correlation id",
            field: "correlation_id",
            call: book(|r| r.correlation_id = long.clone()),
        },
        Case {
            name: "empty hotel name",
            field: "name",
            call: Call::Register(pb::RegisterHotelRequest {
                command_id: new_id(),
                hotel_id: "h9".into(),
                name: "   ".into(),
                city: "Tavira".into(),
                correlation_id: String::new(),
            }),
        },
        Case {
            name: "negative inventory on a new room type",
            field: "inventory",
            call: Call::AddRoomType(pb::AddRoomTypeRequest {
                precondition: None,
                command_id: new_id(),
                hotel_id: "h1".into(),
                code: "TRP".into(),
                name: "Triple".into(),
                max_guests: 3,
                inventory: -1,
                nightly_rate: Some(pb::Money {
                    amount_minor: 100,
                    currency: "EUR".into(),
                }),
                correlation_id: String::new(),
            }),
        },
        Case {
            name: "malformed currency",
            field: "nightly_rate.currency",
            call: Call::AddRoomType(pb::AddRoomTypeRequest {
                precondition: None,
                command_id: new_id(),
                hotel_id: "h1".into(),
                code: "TRP".into(),
                name: "Triple".into(),
                max_guests: 3,
                inventory: 1,
                nightly_rate: Some(pb::Money {
                    amount_minor: 100,
                    currency: "euro".into(),
                }),
                correlation_id: String::new(),
            }),
        },
        Case {
            name: "negative inventory",
            field: "inventory",
            call: Call::Inventory(pb::SetRoomInventoryRequest {
                precondition: None,
                command_id: new_id(),
                hotel_id: "h1".into(),
                room_type_code: "DBL".into(),
                inventory: -5,
                correlation_id: String::new(),
            }),
        },
        Case {
            name: "malformed reservation id",
            field: "reservation_id",
            call: Call::Cancel(pb::CancelReservationRequest {
                precondition: None,
                command_id: new_id(),
                reservation_id: "r-1".into(),
                reason: String::new(),
                correlation_id: String::new(),
            }),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Lagos").await;
    add_room_type(&mut client, "h1", "DBL", 2).await;
    let counts = |db: &TestDb| {
        let db = db.pool.clone();
        async move {
            let mut counts = Vec::new();
            for table in [
                "events",
                "reservations",
                "commands",
                "room_nights",
                "hotels",
                "room_types",
            ] {
                let sql = format!("SELECT COUNT(*) FROM {table}");
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&db)
                    .await
                    .expect("count");
                counts.push(n);
            }
            counts
        }
    };
    let before = counts(&db).await;

    for case in cases() {
        let outcome: Result<(), Status> = match case.call {
            Call::Book(r) => client.book_room(r).await.map(drop),
            Call::Register(r) => client.register_hotel(r).await.map(drop),
            Call::AddRoomType(r) => client.add_room_type(r).await.map(drop),
            Call::Inventory(r) => client.set_room_inventory(r).await.map(drop),
            Call::Cancel(r) => client.cancel_reservation(r).await.map(drop),
        };
        let status = outcome.expect_err(case.name);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {status:?}",
            case.name
        );
        let fields: Vec<String> = field_violations(&status)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, [case.field], "{}: {}", case.name, status.message());
        assert!(
            status.message().contains(case.field),
            "{}: message names the field",
            case.name
        );
    }
    assert_eq!(counts(&db).await, before, "nothing was written");
    server.stop().await;
    db.cleanup().await;
}

/// Every bad field is named, even when one of the dates is not a date: a
/// check-in 8,000 years ahead is wrong on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_check_in_and_an_unparsable_check_out_are_both_named() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    let mut request = booking("h1", "DBL", 1, 3, "ana");
    request.check_in = "9999-12-31".into();
    request.check_out = "10000-01-01".into();
    let status = client.book_room(request).await.expect_err("invalid dates");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut fields: Vec<String> = field_violations(&status)
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    fields.sort();
    assert_eq!(fields, ["check_in", "check_out"], "{}", status.message());
    server.stop().await;
    db.cleanup().await;
}

/// An over-size request is RESOURCE_EXHAUSTED (OUT_OF_RANGE is for
/// subscribing beyond the head), and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_size_request_is_resource_exhausted() {
    let db = TestDb::create().await;
    let mut config = command_server::Config::for_tests(&db.url);
    config.limits.max_request_bytes = 4 * 1024;
    let server = TestServer::start_with(config).await;
    let mut client = server.commands().await;
    let mut request = booking("h1", "DBL", 1, 3, "ana");
    request.guest.as_mut().expect("a guest").name = "x".repeat(10_000);
    let status = client.book_room(request).await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    // Under the limit, the same request is only invalid.
    let mut request = booking("h1", "DBL", 1, 3, "ana");
    request.guest.as_mut().expect("a guest").name = "x".repeat(1_000);
    let status = client.book_room(request).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.stop().await;
    db.cleanup().await;
}
