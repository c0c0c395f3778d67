//! Calendar dates as the API writes them: `YYYY-MM-DD`.

use time::{Date, format_description::BorrowedFormatItem, macros::format_description};

const FORMAT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// Parses `YYYY-MM-DD`; `None` for anything else.
pub fn parse(text: &str) -> Option<Date> {
    if text.len() != 10 {
        return None;
    }
    Date::parse(text, FORMAT).ok()
}

/// Formats as `YYYY-MM-DD`.
pub fn format(date: Date) -> String {
    date.format(FORMAT)
        .expect("a valid date always formats as YYYY-MM-DD")
}

/// Today in UTC.
pub fn today_utc() -> Date {
    time::OffsetDateTime::now_utc().date()
}

/// The nights of a stay: every date in `[check_in, check_out)`.
pub fn nights(check_in: Date, check_out: Date) -> impl Iterator<Item = Date> {
    let mut next = Some(check_in);
    std::iter::from_fn(move || {
        let night = next.filter(|night| *night < check_out)?;
        next = night.next_day();
        Some(night)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let date = parse("2027-02-28").expect("valid date");
        assert_eq!(format(date), "2027-02-28");
        assert_eq!(
            format(date.next_day().expect("has a next day")),
            "2027-03-01"
        );
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "2027-2-28",
            "2027-02-30",
            "28/02/2027",
            "2027-02-28T00:00",
            "abcd-ef-gh",
        ] {
            assert!(parse(bad).is_none(), "{bad} should not parse");
        }
    }

    #[test]
    fn lists_the_nights_of_a_stay() {
        let from = parse("2027-12-30").expect("valid");
        let to = parse("2028-01-02").expect("valid");
        let nights: Vec<String> = nights(from, to).map(format).collect();
        assert_eq!(nights, ["2027-12-30", "2027-12-31", "2028-01-01"]);
        assert_eq!(super::nights(to, from).count(), 0);
    }
}
