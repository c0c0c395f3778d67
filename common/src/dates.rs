//! Calendar dates as the API writes them: `YYYY-MM-DD`.

use time::{Date, Month, format_description::BorrowedFormatItem, macros::format_description};

const FORMAT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// Parses `YYYY-MM-DD`; `None` for anything else. By hand rather than
/// through `time`'s format description: the projector parses two dates per
/// replayed booking, and this is a few times faster (ADR 0014).
pub fn parse(text: &str) -> Option<Date> {
    let &[y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = text.as_bytes() else {
        return None;
    };
    let digits = |ds: &[u8]| {
        ds.iter().try_fold(0u16, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0'))
        })
    };
    let year = digits(&[y1, y2, y3, y4])?;
    let month = Month::try_from(u8::try_from(digits(&[m1, m2])?).ok()?).ok()?;
    let day = u8::try_from(digits(&[d1, d2])?).ok()?;
    Date::from_calendar_date(i32::from(year), month, day).ok()
}

/// Formats as `YYYY-MM-DD`.
pub fn format(date: Date) -> String {
    let Ok(year) = u16::try_from(date.year()) else {
        return format_slow(date);
    };
    if year > 9999 {
        return format_slow(date);
    }
    let (month, day) = (u8::from(date.month()), date.day());
    let digit = |n: u16| char::from(b'0' + (n % 10) as u8);
    let mut text = String::with_capacity(10);
    text.extend([
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        '-',
        digit(u16::from(month) / 10),
        digit(u16::from(month)),
        '-',
        digit(u16::from(day) / 10),
        digit(u16::from(day)),
    ]);
    text
}

/// [`format`] for the years it does not write by hand (before year 0).
fn format_slow(date: Date) -> String {
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
    fn parses_and_formats_every_date_as_time_does() {
        // Every day around year 0, of three centuries and up to the last
        // day `time` knows.
        let day = |y, m, d| Date::from_calendar_date(y, m, d).expect("valid");
        use time::Month::{December, January};
        let mut checked = 0;
        for (first, last) in [
            (day(-2, December, 25), day(1, January, 10)),
            (day(1899, January, 1), day(2201, January, 1)),
            (day(9998, December, 1), day(9999, December, 31)),
        ] {
            let mut date = first;
            while date <= last {
                let by_time = date.format(FORMAT).expect("formats");
                assert_eq!(format(date), by_time);
                assert_eq!(
                    parse(&by_time),
                    Date::parse(&by_time, FORMAT)
                        .ok()
                        .filter(|_| by_time.len() == 10),
                    "{by_time}"
                );
                checked += 1;
                let Some(next) = date.next_day() else { break };
                date = next;
            }
        }
        assert!(checked > 110_000, "{checked} dates");
        for text in [
            "2027-02-29",
            "2028-02-29",
            "2027-13-01",
            "2027-00-10",
            "2027-04-31",
        ] {
            assert_eq!(parse(text), Date::parse(text, FORMAT).ok(), "{text}");
        }
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
            "+027-02-28",
            "2027-+2-28",
            "2027-02-2\u{e9}",
            "2027\u{2010}02-28",
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
