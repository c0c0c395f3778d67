//! The data set a load runs against: which hotels and room types exist, in
//! which cities, and the stays booked into them. `setup` creates it, the
//! workloads derive the same ids from the same flags.

use clap::Args;
use rand::Rng;
use time::{Date, Duration};

/// Cities the hotels are spread over, in order.
const CITIES: &[&str] = &[
    "Lisbon", "Porto", "Madrid", "Seville", "Lyon", "Turin", "Ghent", "Krakow",
];

/// Flags naming the data set; `setup` and `run` must be given the same ones.
#[derive(Debug, Clone, Args)]
pub struct HotelArgs {
    /// Number of hotels.
    #[arg(long, default_value_t = 20)]
    pub hotels: usize,

    /// Room types per hotel.
    #[arg(long, default_value_t = 3)]
    pub room_types: usize,

    /// Number of cities the hotels are spread over (at most 8).
    #[arg(long, default_value_t = 5)]
    pub cities: usize,

    /// Prefix of the hotel ids, so that several data sets can share one
    /// database.
    #[arg(long, default_value = "lg")]
    pub prefix: String,
}

/// The data set, with the ids it derives.
#[derive(Debug, Clone)]
pub struct Hotels {
    /// How many hotels there are.
    pub hotels: usize,
    /// Room types per hotel.
    pub room_types: usize,
    /// Cities used, a prefix of `CITIES`.
    cities: usize,
    /// Prefix of every hotel id.
    prefix: String,
}

/// One stay to book: a room type and its nights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stay {
    pub hotel: usize,
    pub room_type: usize,
    pub check_in: Date,
    pub nights: i64,
}

impl Stay {
    pub fn check_out(&self) -> Date {
        self.check_in + Duration::days(self.nights)
    }
}

impl Hotels {
    pub fn new(args: &HotelArgs) -> Self {
        Self {
            hotels: args.hotels.max(1),
            room_types: args.room_types.max(1),
            cities: args.cities.clamp(1, CITIES.len()),
            prefix: args.prefix.clone(),
        }
    }

    pub fn hotel_id(&self, hotel: usize) -> String {
        format!("{}-h{hotel:03}", self.prefix)
    }

    pub fn room_code(&self, room_type: usize) -> String {
        format!("RT{room_type}")
    }

    pub fn city_of(&self, hotel: usize) -> &'static str {
        CITIES[hotel % self.cities]
    }

    /// A city that has hotels.
    pub fn random_city(&self, rng: &mut impl Rng) -> &'static str {
        CITIES[rng.random_range(0..self.cities.min(self.hotels))]
    }

    /// The contended stay: the first room type of the first hotel, for the
    /// same two nights a week ahead (or tomorrow when the window is short).
    pub fn hot_stay(&self, today: Date, window_days: i64) -> Stay {
        let offset = if window_days > 7 { 7 } else { 1 };
        Stay {
            hotel: 0,
            room_type: 0,
            check_in: today + Duration::days(offset),
            nights: 2,
        }
    }

    /// A stay of 1 to 3 nights on a random room type, starting `offset` days
    /// from today.
    pub fn stay_from(&self, rng: &mut impl Rng, today: Date, offset: i64) -> Stay {
        Stay {
            hotel: rng.random_range(0..self.hotels),
            room_type: rng.random_range(0..self.room_types),
            check_in: today + Duration::days(offset),
            nights: rng.random_range(1..=3),
        }
    }

    /// A stay starting on a random day from tomorrow to `window_days` ahead.
    pub fn random_stay(&self, rng: &mut impl Rng, today: Date, window_days: i64) -> Stay {
        let offset = rng.random_range(1..=window_days.max(1));
        self.stay_from(rng, today, offset)
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::SmallRng};

    use super::*;

    #[test]
    fn ids_are_valid_and_stays_stay_in_the_window() {
        let hotels = Hotels::new(&HotelArgs {
            hotels: 20,
            room_types: 3,
            cities: 5,
            prefix: "lg".into(),
        });
        assert_eq!(hotels.hotel_id(7), "lg-h007");
        assert_eq!(hotels.room_code(2), "RT2");
        assert_eq!(hotels.city_of(6), "Porto");
        let today = hotel_common::dates::today_utc();
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let stay = hotels.random_stay(&mut rng, today, 30);
            assert!(stay.check_in > today);
            assert!(stay.check_in <= today + Duration::days(30));
            assert!((1..=3).contains(&stay.nights));
            assert!(stay.hotel < 20 && stay.room_type < 3);
        }
    }
}
