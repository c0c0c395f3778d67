//! Whether a query server's read model says what MySQL's write model says,
//! read through the query API as of one position: every reservation of
//! every hotel (ListReservations, all pages) and every night of every room
//! type (GetAvailability).

use std::collections::BTreeMap;

use hotel_common::pb::{self, query_service_client::QueryServiceClient};
use tonic::transport::Channel;

use super::TestDb;

/// A reservation as both sides show it: hotel, room type, check-in,
/// check-out, guest, status, version.
type Reservation = (String, String, String, String, String, String, i64);
/// A row of MySQL's `reservations`: its id, then a [`Reservation`].
type StoredRow = (String, String, String, String, String, String, String, i64);

fn status_name(status: i32) -> String {
    use pb::ReservationStatus as S;
    match S::try_from(status) {
        Ok(S::Confirmed) => "CONFIRMED",
        Ok(S::Waitlisted) => "WAITLISTED",
        Ok(S::Cancelled) => "CANCELLED",
        Ok(S::CheckedIn) => "CHECKED_IN",
        Ok(S::CheckedOut) => "CHECKED_OUT",
        _ => "UNSPECIFIED",
    }
    .to_owned()
}

/// Asserts that the read model behind `queries`, at exactly `head`, holds
/// what `db` holds; returns (reservations, nights) compared.
pub async fn assert_read_model_matches(
    db: &TestDb,
    queries: &mut QueryServiceClient<Channel>,
    head: i64,
) -> (usize, usize) {
    let hotels: Vec<String> = sqlx::query_scalar("SELECT hotel_id FROM hotels ORDER BY hotel_id")
        .fetch_all(&db.pool)
        .await
        .expect("hotels");
    let rows: Vec<(String, Reservation)> = sqlx::query_as::<_, StoredRow>(
        "SELECT reservation_id, hotel_id, room_type_code, CAST(check_in AS CHAR), \
         CAST(check_out AS CHAR), guest_id, status, version FROM reservations",
    )
    .fetch_all(&db.pool)
    .await
    .expect("reservations")
    .into_iter()
    .map(|(id, h, c, i, o, g, s, v)| (id, (h, c, i, o, g, s, v)))
    .collect();
    let stored: BTreeMap<String, Reservation> = rows.into_iter().collect();

    let mut read: BTreeMap<String, Reservation> = BTreeMap::new();
    for hotel in &hotels {
        let mut page_token = String::new();
        loop {
            let page = queries
                .list_reservations(pb::ListReservationsRequest {
                    hotel_id: hotel.clone(),
                    page_size: 500,
                    page_token: page_token.clone(),
                    min_position: head,
                    ..Default::default()
                })
                .await
                .expect("list reservations")
                .into_inner();
            assert_eq!(page.as_of_position, head, "the read model is at the head");
            for r in page.reservations {
                let guest = r.guest.map(|g| g.guest_id).unwrap_or_default();
                let value = (
                    r.hotel_id,
                    r.room_type_code,
                    r.check_in,
                    r.check_out,
                    guest,
                    status_name(r.status),
                    r.version,
                );
                let id = r.reservation_id;
                assert!(
                    read.insert(id.clone(), value).is_none(),
                    "{id} listed twice"
                );
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    let wrong: Vec<String> = stored
        .iter()
        .filter(|(id, row)| read.get(*id) != Some(row))
        .chain(read.iter().filter(|(id, _)| !stored.contains_key(*id)))
        .map(|(id, _)| {
            format!(
                "{id}: MySQL {:?}, read model {:?}",
                stored.get(id),
                read.get(id)
            )
        })
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "reservations differ:\n{}",
        wrong.join("\n")
    );

    let nights: Vec<(String, String, String, i32, i32)> = sqlx::query_as(
        "SELECT hotel_id, code, CAST(night AS CHAR), booked, waiting FROM room_nights",
    )
    .fetch_all(&db.pool)
    .await
    .expect("room nights");
    let nights: BTreeMap<(String, String, String), (i32, i32)> = nights
        .into_iter()
        .map(|(h, c, n, b, w)| ((h, c, n), (b, w)))
        .collect();
    let room_types: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT hotel_id, code, inventory FROM room_types")
            .fetch_all(&db.pool)
            .await
            .expect("room types");
    let inventories: BTreeMap<(String, String), i32> = room_types
        .into_iter()
        .map(|(h, c, i)| ((h, c), i))
        .collect();
    let Some(((_, _, first), _)) = nights.first_key_value() else {
        return (stored.len(), 0);
    };
    let from = nights
        .keys()
        .map(|(_, _, night)| night)
        .min()
        .unwrap_or(first)
        .clone();
    let last = nights
        .keys()
        .map(|(_, _, night)| night)
        .max()
        .unwrap_or(first)
        .clone();
    let to = hotel_common::dates::format(
        hotel_common::dates::parse(&last)
            .and_then(|night| night.next_day())
            .expect("a date with a next day"),
    );

    let mut compared = 0;
    let mut wrong = Vec::new();
    for hotel in &hotels {
        let availability = queries
            .get_availability(pb::GetAvailabilityRequest {
                hotel_id: hotel.clone(),
                room_type_code: String::new(),
                from_date: from.clone(),
                to_date: to.clone(),
                min_position: head,
            })
            .await
            .expect("availability")
            .into_inner();
        assert_eq!(availability.as_of_position, head);
        let mut codes: Vec<&str> = availability
            .room_types
            .iter()
            .map(|t| t.room_type_code.as_str())
            .collect();
        codes.sort_unstable();
        let expected: Vec<&str> = inventories
            .keys()
            .filter(|(h, _)| h == hotel)
            .map(|(_, code)| code.as_str())
            .collect();
        assert_eq!(codes, expected, "room types of {hotel}");
        for room_type in &availability.room_types {
            let key = (hotel.clone(), room_type.room_type_code.clone());
            let inventory = inventories[&key];
            for night in &room_type.nights {
                let (booked, waiting) = nights
                    .get(&(key.0.clone(), key.1.clone(), night.date.clone()))
                    .copied()
                    .unwrap_or((0, 0));
                let expected = (inventory, booked, (inventory - booked).max(0), waiting);
                let got = (night.inventory, night.booked, night.free, night.waiting);
                if got != expected {
                    wrong.push(format!(
                        "{}/{} {}: MySQL (inventory, booked, free, waiting) {expected:?}, \
                         read model {got:?}",
                        key.0, key.1, night.date
                    ));
                }
                compared += 1;
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} nights differ, e.g.:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(compared >= nights.len(), "every stored night was compared");
    (stored.len(), compared)
}
