//! Every query over gRPC, against a query server whose read model is fed
//! synthetic events through a scripted event stream.

mod support;

use std::{collections::HashSet, time::Duration};

use hotel_common::{
    pb::{self, ReservationStatus as S},
    validate::field_violations,
};
use support::{App, Events, ScriptedStream, Stay, TempDir};
use tonic::{Code, Request};

/// A small world: two hotels in Lisboa (one spelled in capitals), one in
/// Porto; seven stays of guest "ana" at h1; a waiting list on h1/SGL.
struct World {
    events: Events,
    stream: ScriptedStream,
    ana: Vec<Stay>,
    waiting: Vec<Stay>,
}

fn world() -> World {
    let mut e = Events::new();
    let mut log = vec![
        e.hotel("h1", "Grande Lisboa", "Lisboa"),
        e.room_type("h1", "DBL", 2, 2, 12_000),
        e.room_type("h1", "SGL", 1, 1, 8_000),
        e.hotel("h2", "Casa Azul", "LISBOA"),
        e.room_type("h2", "DBL", 2, 1, 9_000),
        e.room_type("h2", "FAM", 4, 1, 20_000),
        e.hotel("h3", "Ribeira", "Porto"),
        e.room_type("h3", "DBL", 2, 5, 5_000),
    ];
    let ana: Vec<Stay> = (0..7)
        .map(|i| {
            let day = 10 + i * 2;
            Stay::new(
                "h1",
                "DBL",
                "ana",
                &format!("2030-06-{day:02}"),
                &format!("2030-06-{:02}", day + 1),
            )
        })
        .collect();
    for stay in &ana {
        log.push(e.confirmed(stay));
    }
    // h1/SGL: one confirmed on 2030-07-01..03, then three waiting.
    let held = Stay::new("h1", "SGL", "bo", "2030-07-01", "2030-07-03");
    log.push(e.confirmed(&held));
    let waiting = vec![
        Stay::new("h1", "SGL", "cy", "2030-07-01", "2030-07-02"),
        Stay::new("h1", "SGL", "di", "2030-07-02", "2030-07-03"),
        Stay::new("h1", "SGL", "ed", "2030-07-01", "2030-07-03"),
    ];
    log.push(e.waitlisted(&waiting[0], 0));
    log.push(e.waitlisted(&waiting[1], 10));
    log.push(e.waitlisted(&waiting[2], 0));
    // h2/DBL is full on 2030-07-01.
    log.push(e.confirmed(&Stay::new("h2", "DBL", "fa", "2030-07-01", "2030-07-02")));
    let stream = ScriptedStream::new();
    stream.append(log);
    World {
        events: e,
        stream,
        ana,
        waiting,
    }
}

async fn start(dir: &TempDir) -> (App, World) {
    let world = world();
    let app = App::spawn(dir, world.stream.clone()).await;
    app.wait_for(world.stream.head()).await;
    (app, world)
}

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    field_violations(status)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

#[tokio::test]
async fn get_reservation_found_missing_and_invalid() {
    let dir = TempDir::new();
    let (app, world) = start(&dir).await;
    let mut client = app.client().await;

    let reply = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: world.ana[0].reservation_id.to_uppercase(),
            min_position: 0,
        })
        .await
        .expect("found")
        .into_inner();
    let reservation = reply.reservation.expect("reservation");
    assert_eq!(reservation.reservation_id, world.ana[0].reservation_id);
    assert_eq!(reservation.status(), S::Confirmed);
    assert_eq!(reservation.check_in, "2030-06-10");
    assert_eq!(reply.as_of_position, world.stream.head());

    let missing = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: uuid::Uuid::new_v4().to_string(),
            min_position: 0,
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);

    let invalid = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: "nope".into(),
            min_position: -1,
        })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&invalid), ["reservation_id", "min_position"]);
    app.stop().await;
}

#[tokio::test]
async fn list_reservations_pages_newest_first_without_gaps_or_repeats() {
    let dir = TempDir::new();
    let (app, world) = start(&dir).await;
    let mut client = app.client().await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let reply = client
            .list_reservations(pb::ListReservationsRequest {
                guest_id: "ana".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(reply.reservations.len() <= 3);
        seen.extend(reply.reservations.into_iter().map(|r| r.reservation_id));
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = world
        .ana
        .iter()
        .rev()
        .map(|s| s.reservation_id.clone())
        .collect();
    assert_eq!(seen, newest_first);

    // By hotel, only the waitlisted ones.
    let reply = client
        .list_reservations(pb::ListReservationsRequest {
            hotel_id: "h1".into(),
            statuses: vec![S::Waitlisted as i32],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: HashSet<String> = reply
        .reservations
        .iter()
        .map(|r| r.reservation_id.clone())
        .collect();
    let expected: HashSet<String> = world
        .waiting
        .iter()
        .map(|s| s.reservation_id.clone())
        .collect();
    assert_eq!(ids, expected);
    assert!(reply.next_page_token.is_empty());

    // A page exactly as long as what is left has no next token.
    let reply = client
        .list_reservations(pb::ListReservationsRequest {
            guest_id: "ana".into(),
            page_size: 7,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(reply.reservations.len(), 7);
    assert!(reply.next_page_token.is_empty());

    let unknown_hotel = client
        .list_reservations(pb::ListReservationsRequest {
            hotel_id: "nowhere".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown hotel");
    assert_eq!(unknown_hotel.code(), Code::NotFound);

    let unknown_guest = client
        .list_reservations(pb::ListReservationsRequest {
            guest_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect("an unknown guest simply has none")
        .into_inner();
    assert!(unknown_guest.reservations.is_empty());

    for (request, expected) in [
        (pb::ListReservationsRequest::default(), vec!["guest_id"]),
        (
            pb::ListReservationsRequest {
                guest_id: "ana".into(),
                hotel_id: "h1".into(),
                ..Default::default()
            },
            vec!["hotel_id"],
        ),
        (
            pb::ListReservationsRequest {
                guest_id: "ana".into(),
                page_size: 501,
                page_token: "not-a-token".into(),
                statuses: vec![S::Confirmed as i32, 0, 42],
                ..Default::default()
            },
            vec!["statuses[1]", "statuses[2]", "page_size", "page_token"],
        ),
        // Over the cap of items, the field is refused whole, items unchecked.
        (
            pb::ListReservationsRequest {
                hotel_id: "h1".into(),
                statuses: vec![42; 101],
                ..Default::default()
            },
            vec!["statuses"],
        ),
        // Many bad items: the first eight, then how many more.
        (
            pb::ListReservationsRequest {
                hotel_id: "h1".into(),
                statuses: vec![42; 100],
                ..Default::default()
            },
            vec![
                "statuses[0]",
                "statuses[1]",
                "statuses[2]",
                "statuses[3]",
                "statuses[4]",
                "statuses[5]",
                "statuses[6]",
                "statuses[7]",
                "...",
            ],
        ),
    ] {
        let status = client
            .list_reservations(request)
            .await
            .expect_err("invalid");
        assert_eq!(fields(&status), expected);
    }
    app.stop().await;
}

#[tokio::test]
async fn availability_per_night_and_room_type() {
    let dir = TempDir::new();
    let (app, _world) = start(&dir).await;
    let mut client = app.client().await;

    let reply = client
        .get_availability(pb::GetAvailabilityRequest {
            hotel_id: "h1".into(),
            room_type_code: "SGL".into(),
            from_date: "2030-06-30".into(),
            to_date: "2030-07-04".into(),
            min_position: 0,
        })
        .await
        .expect("availability")
        .into_inner();
    assert_eq!(reply.room_types.len(), 1);
    let sgl = &reply.room_types[0];
    assert_eq!(sgl.room_type_code, "SGL");
    assert_eq!(sgl.max_guests, 1);
    let nights: Vec<(&str, i32, i32, i32, i32)> = sgl
        .nights
        .iter()
        .map(|n| (n.date.as_str(), n.inventory, n.booked, n.free, n.waiting))
        .collect();
    assert_eq!(
        nights,
        [
            ("2030-06-30", 1, 0, 1, 0),
            ("2030-07-01", 1, 1, 0, 2),
            ("2030-07-02", 1, 1, 0, 2),
            ("2030-07-03", 1, 0, 1, 0),
        ]
    );

    let all = client
        .get_availability(pb::GetAvailabilityRequest {
            hotel_id: "h1".into(),
            from_date: "2030-06-10".into(),
            to_date: "2030-06-11".into(),
            ..Default::default()
        })
        .await
        .expect("availability")
        .into_inner();
    let codes: Vec<&str> = all
        .room_types
        .iter()
        .map(|r| r.room_type_code.as_str())
        .collect();
    assert_eq!(codes, ["DBL", "SGL"]);
    assert_eq!(all.room_types[0].nights[0].booked, 1);
    assert_eq!(all.room_types[0].nights[0].free, 1);

    let unknown = client
        .get_availability(pb::GetAvailabilityRequest {
            hotel_id: "h1".into(),
            room_type_code: "SUITE".into(),
            from_date: "2030-06-10".into(),
            to_date: "2030-06-11".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown room type");
    assert_eq!(unknown.code(), Code::NotFound);
    let unknown = client
        .get_availability(pb::GetAvailabilityRequest {
            hotel_id: "nowhere".into(),
            from_date: "2030-06-10".into(),
            to_date: "2030-06-11".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown hotel");
    assert_eq!(unknown.code(), Code::NotFound);

    for (from, to, expected) in [
        ("2030-01-01", "2031-01-03", vec!["to_date"]),
        ("2030-01-02", "2030-01-01", vec!["to_date"]),
        ("2030-02-30", "", vec!["from_date", "to_date"]),
    ] {
        let status = client
            .get_availability(pb::GetAvailabilityRequest {
                hotel_id: "h1".into(),
                room_type_code: "dbl".into(),
                from_date: from.into(),
                to_date: to.into(),
                ..Default::default()
            })
            .await
            .expect_err("invalid");
        let mut wanted = vec!["room_type_code"];
        wanted.extend(expected);
        assert_eq!(fields(&status), wanted);
    }
    app.stop().await;
}

#[tokio::test]
async fn search_finds_free_rooms_cheapest_first_in_pages() {
    let dir = TempDir::new();
    let (app, _world) = start(&dir).await;
    let mut client = app.client().await;

    let search = |page_token: String, page_size: i32, guests: i32| pb::SearchAvailabilityRequest {
        city: "  lisBOA ".into(),
        check_in: "2030-07-01".into(),
        check_out: "2030-07-03".into(),
        guests,
        page_size,
        page_token,
        min_position: 0,
    };
    let reply = client
        .search_availability(search(String::new(), 0, 2))
        .await
        .expect("search")
        .into_inner();
    let found: Vec<(String, String, i32, i64)> = reply
        .results
        .iter()
        .map(|r| {
            (
                r.hotel_id.clone(),
                r.room_type_code.clone(),
                r.free_rooms,
                r.total_price.as_ref().map_or(0, |m| m.amount_minor),
            )
        })
        .collect();
    // h1/SGL holds one guest only; h2/DBL is full on 07-01.
    assert_eq!(
        found,
        [
            ("h1".to_string(), "DBL".to_string(), 2, 24_000),
            ("h2".to_string(), "FAM".to_string(), 1, 40_000),
        ]
    );
    assert_eq!(reply.results[0].city, "Lisboa");
    assert_eq!(reply.results[0].hotel_name, "Grande Lisboa");

    // One per page, through to the end.
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let reply = client
            .search_availability(search(token, 1, 2))
            .await
            .expect("page")
            .into_inner();
        paged.extend(
            reply
                .results
                .into_iter()
                .map(|r| (r.hotel_id, r.room_type_code)),
        );
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    assert_eq!(
        paged,
        [
            ("h1".to_string(), "DBL".to_string()),
            ("h2".to_string(), "FAM".to_string())
        ]
    );

    let four = client
        .search_availability(search(String::new(), 0, 4))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(four.results.len(), 1);
    assert_eq!(four.results[0].room_type_code, "FAM");

    let status = client
        .search_availability(pb::SearchAvailabilityRequest {
            city: String::new(),
            check_in: "2030-07-03".into(),
            check_out: "2030-07-01".into(),
            guests: 0,
            page_size: -1,
            page_token: "00".into(),
            min_position: 0,
        })
        .await
        .expect_err("invalid");
    assert_eq!(
        fields(&status),
        ["city", "check_out", "guests", "page_size", "page_token"]
    );
    app.stop().await;
}

#[tokio::test]
async fn waitlist_in_promotion_order_and_occupancy() {
    let dir = TempDir::new();
    let (app, world) = start(&dir).await;
    let mut client = app.client().await;

    let reply = client
        .get_waitlist(pb::GetWaitlistRequest {
            hotel_id: "h1".into(),
            room_type_code: "SGL".into(),
            min_position: 0,
        })
        .await
        .expect("waitlist")
        .into_inner();
    let order: Vec<&str> = reply
        .entries
        .iter()
        .map(|e| e.reservation_id.as_str())
        .collect();
    // Priority 10 first, then the older of the two priority 0.
    assert_eq!(
        order,
        [
            world.waiting[1].reservation_id.as_str(),
            world.waiting[0].reservation_id.as_str(),
            world.waiting[2].reservation_id.as_str(),
        ]
    );
    assert_eq!(reply.entries[0].priority, 10);
    assert_eq!(reply.as_of_position, world.stream.head());
    let unknown = client
        .get_waitlist(pb::GetWaitlistRequest {
            hotel_id: "h1".into(),
            room_type_code: "NOPE".into(),
            min_position: 0,
        })
        .await
        .expect_err("unknown room type");
    assert_eq!(unknown.code(), Code::NotFound);
    let invalid = client
        .get_waitlist(pb::GetWaitlistRequest::default())
        .await
        .expect_err("invalid");
    assert_eq!(fields(&invalid), ["hotel_id", "room_type_code"]);

    let reply = client
        .get_occupancy(pb::GetOccupancyRequest {
            hotel_id: "h1".into(),
            from_date: "2030-07-01".into(),
            to_date: "2030-07-04".into(),
            min_position: 0,
        })
        .await
        .expect("occupancy")
        .into_inner();
    let nights: Vec<(&str, i32, i32, f64)> = reply
        .nights
        .iter()
        .map(|n| (n.date.as_str(), n.rooms, n.booked, n.occupancy))
        .collect();
    let third = 1.0 / 3.0;
    assert_eq!(
        nights,
        [
            ("2030-07-01", 3, 1, third),
            ("2030-07-02", 3, 1, third),
            ("2030-07-03", 3, 0, 0.0),
        ]
    );
    let invalid = client
        .get_occupancy(pb::GetOccupancyRequest {
            hotel_id: "bad id".into(),
            from_date: "2030-01-01".into(),
            to_date: "2031-06-01".into(),
            min_position: 0,
        })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&invalid), ["hotel_id", "to_date"]);
    app.stop().await;
}

#[tokio::test]
async fn min_position_waits_for_the_projection_or_answers_unavailable() {
    let dir = TempDir::new();
    let (app, mut world) = start(&dir).await;
    let mut client = app.client().await;
    let head = world.stream.head();

    // The wanted position arrives while the query waits.
    let stay = Stay::new("h3", "DBL", "gil", "2030-08-01", "2030-08-02");
    let booking = world.events.confirmed(&stay);
    let wanted = booking.position;
    let stream = world.stream.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.append([booking]);
    });
    let mut request = Request::new(pb::GetReservationRequest {
        reservation_id: stay.reservation_id.clone(),
        min_position: wanted,
    });
    request.set_timeout(Duration::from_secs(5));
    let reply = client
        .get_reservation(request)
        .await
        .expect("read your write")
        .into_inner();
    assert!(reply.as_of_position >= wanted);
    assert_eq!(reply.reservation.map(|r| r.guests), Some(2));
    append.await.expect("append task");

    // A position that never comes: UNAVAILABLE naming both positions, at the deadline.
    let mut request = Request::new(pb::GetAvailabilityRequest {
        hotel_id: "h1".into(),
        from_date: "2030-06-10".into(),
        to_date: "2030-06-11".into(),
        min_position: wanted + 100,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = client
        .get_availability(request)
        .await
        .expect_err("never reached");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!("position {}", head + 1)),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains(&format!("needs {}", wanted + 100)),
        "{}",
        status.message()
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(2));

    // Without min_position the answer comes at once, labelled with its position.
    let reply = client
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(reply.checkpoint, wanted);
    assert_eq!(reply.head, wanted);
    assert_eq!(reply.lag_events, 0);
    assert_eq!(reply.lag_seconds, 0.0);
    assert_eq!(reply.state(), pb::ProjectionState::Live);
    assert!(reply.last_applied_at.is_some());
    app.stop().await;
}

#[tokio::test]
async fn watch_reservation_sends_every_change_in_order() {
    let dir = TempDir::new();
    let (app, mut world) = start(&dir).await;
    let mut client = app.client().await;
    let stay = world.waiting[0].clone();

    let mut updates = client
        .watch_reservation(pb::WatchReservationRequest {
            reservation_id: stay.reservation_id.clone(),
            min_position: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = updates.message().await.expect("stream").expect("snapshot");
    assert_eq!(
        first.reservation.as_ref().map(|r| r.status()),
        Some(S::Waitlisted)
    );

    // Promotion in one batch with an unrelated event, then check-in and
    // check-out together in one batch: each state arrives.
    let other = Stay::new("h3", "DBL", "hal", "2030-08-01", "2030-08-02");
    let batch = [world.events.promoted(&stay), world.events.confirmed(&other)];
    world.stream.append(batch);
    let batch = [
        world.events.checked_in(&stay),
        world.events.checked_out(&stay),
    ];
    let last = batch[1].position;
    world.stream.append(batch);

    let mut statuses = Vec::new();
    let mut positions = Vec::new();
    while statuses.len() < 3 {
        let update = tokio::time::timeout(Duration::from_secs(5), updates.message())
            .await
            .expect("an update in time")
            .expect("stream")
            .expect("open");
        let reservation = update.reservation.expect("reservation");
        statuses.push(reservation.status());
        positions.push(reservation.last_position);
        assert!(update.as_of_position >= reservation.last_position);
    }
    assert_eq!(statuses, [S::Confirmed, S::CheckedIn, S::CheckedOut]);
    assert_eq!(positions[2], last);
    assert!(positions.windows(2).all(|w| w[0] < w[1]));

    let missing = client
        .watch_reservation(pb::WatchReservationRequest {
            reservation_id: uuid::Uuid::new_v4().to_string(),
            min_position: 0,
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await;
    // The stream ends cleanly when the server stops.
    let end = tokio::time::timeout(Duration::from_secs(5), updates.message())
        .await
        .expect("the watch ends on shutdown");
    assert!(matches!(end, Ok(None) | Err(_)));
}

#[tokio::test]
async fn watch_availability_sends_the_state_then_each_change() {
    let dir = TempDir::new();
    let (app, mut world) = start(&dir).await;
    let mut client = app.client().await;

    let mut updates = client
        .watch_availability(pb::WatchAvailabilityRequest {
            hotel_id: "h3".into(),
            room_type_code: "DBL".into(),
            from_date: "2030-09-01".into(),
            to_date: "2030-09-02".into(),
            min_position: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let free = |reply: &pb::GetAvailabilityResponse| reply.room_types[0].nights[0].free;
    let first = updates.message().await.expect("stream").expect("snapshot");
    assert_eq!(free(&first), 5);

    // An unrelated change sends nothing; each booking of that night does.
    let unrelated = world.events.hotel("h9", "Elsewhere", "Faro");
    world.stream.append([unrelated]);
    for guest in ["a", "b", "c"] {
        let stay = Stay::new("h3", "DBL", guest, "2030-09-01", "2030-09-03");
        let booking = world.events.confirmed(&stay);
        let position = booking.position;
        world.stream.append([booking]);
        let update = tokio::time::timeout(Duration::from_secs(5), updates.message())
            .await
            .expect("an update in time")
            .expect("stream")
            .expect("open");
        assert!(update.as_of_position >= position);
        assert_eq!(
            free(&update),
            5 - (position - first.as_of_position - 1) as i32
        );
    }
    app.stop().await;
}

/// GetAvailability answers from memory, which the writer updates just after
/// each commit; a GetReservation in between reads the file at the new
/// position. A client that reads the one and then the other must not see
/// its positions go back: here a second writer commits without updating
/// the memory at all (the moment between the commit and the update, held
/// open), and availability is then answered from the file.
#[tokio::test]
async fn availability_after_a_newer_read_of_the_file_is_not_answered_at_an_older_position() {
    let dir = TempDir::new();
    let (app, mut world) = start(&dir).await;
    let mut client = app.client().await;
    let head = world.stream.head();
    let availability = pb::GetAvailabilityRequest {
        hotel_id: "h3".into(),
        room_type_code: "DBL".into(),
        from_date: "2030-08-01".into(),
        to_date: "2030-08-02".into(),
        min_position: 0,
    };
    let before = client
        .get_availability(availability.clone())
        .await
        .expect("availability")
        .into_inner();
    assert_eq!(before.as_of_position, head);

    let stay = Stay::new("h3", "DBL", "gil", "2030-08-01", "2030-08-02");
    let mut writer = query_server::read_model::Writer::open(&dir.db()).expect("a second writer");
    writer
        .apply_batch(&[world.events.confirmed(&stay)])
        .expect("applies");
    let reservation = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: stay.reservation_id.clone(),
            min_position: 0,
        })
        .await
        .expect("the new reservation, read from the file")
        .into_inner();
    assert_eq!(reservation.as_of_position, head + 1);

    let after = client
        .get_availability(availability)
        .await
        .expect("availability")
        .into_inner();
    assert_eq!(
        after.as_of_position,
        head + 1,
        "availability went back to an older position after a read at {}",
        head + 1
    );
    let booked = after.room_types[0].nights[0].booked;
    assert_eq!(
        booked, 1,
        "and it counts the booking committed at that position"
    );
    drop(writer);
}
