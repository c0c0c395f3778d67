//! The operation mix of `loadgen run`: weights per operation, parsed from
//! `book=70,cancel=10,checkin=5,query=15`, and a weighted random choice.

use std::fmt;

use rand::Rng;

/// One operation of the hotel workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Book,
    Cancel,
    CheckIn,
    GetReservation,
    GetAvailability,
    SearchAvailability,
}

impl Op {
    const ALL: [Op; 6] = [
        Op::Book,
        Op::Cancel,
        Op::CheckIn,
        Op::GetReservation,
        Op::GetAvailability,
        Op::SearchAvailability,
    ];

    /// Served by the query server.
    pub fn is_query(self) -> bool {
        matches!(
            self,
            Op::GetReservation | Op::GetAvailability | Op::SearchAvailability
        )
    }
}

/// Weights of the operations; at least one is positive.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// Weight of each of `Op::ALL`, in that order.
    weights: [f64; 6],
    /// Their sum.
    total: f64,
}

impl Mix {
    /// Parses `key=weight` pairs. Keys: `book`, `cancel`, `checkin`, and for
    /// queries either `query` (split evenly over the three) or `get`,
    /// `availability`, `search` one by one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut weights = [0.0; 6];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=weight"))?;
            let weight: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("weight '{value}' of {key} is not a number >= 0"))?;
            match key.trim() {
                "book" => weights[0] += weight,
                "cancel" => weights[1] += weight,
                "checkin" | "check_in" => weights[2] += weight,
                "get" | "get_reservation" => weights[3] += weight,
                "availability" | "get_availability" => weights[4] += weight,
                "search" | "search_availability" => weights[5] += weight,
                "query" | "queries" => {
                    for w in &mut weights[3..] {
                        *w += weight / 3.0;
                    }
                }
                other => {
                    return Err(format!(
                        "unknown operation '{other}': use book, cancel, checkin, query, get, availability, search"
                    ));
                }
            }
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err("the mix needs at least one positive weight".to_owned());
        }
        Ok(Self { weights, total })
    }

    pub fn weight(&self, op: Op) -> f64 {
        Op::ALL
            .iter()
            .position(|o| *o == op)
            .map_or(0.0, |i| self.weights[i])
    }

    pub fn has_queries(&self) -> bool {
        Op::ALL
            .iter()
            .any(|op| op.is_query() && self.weight(*op) > 0.0)
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Op {
        let mut point = rng.random_range(0.0..self.total);
        for (op, weight) in Op::ALL.iter().zip(self.weights) {
            if point < weight {
                return *op;
            }
            point -= weight;
        }
        // Rounding can leave a sliver past the last positive weight.
        Op::ALL
            .iter()
            .zip(self.weights)
            .rev()
            .find(|(_, w)| *w > 0.0)
            .map_or(Op::Book, |(op, _)| *op)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = ["book", "cancel", "checkin", "get", "availability", "search"];
        let parts: Vec<String> = names
            .iter()
            .zip(self.weights)
            .filter(|(_, w)| *w > 0.0)
            .map(|(name, w)| format!("{name}={}", (w * 100.0).round() / 100.0))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::SmallRng};

    use super::*;

    #[test]
    fn parses_keys_and_splits_query() {
        let mix = Mix::parse("book=70,cancel=10,checkin=5,query=15").expect("valid");
        assert_eq!(mix.weight(Op::Book), 70.0);
        assert_eq!(mix.weight(Op::CheckIn), 5.0);
        assert_eq!(mix.weight(Op::SearchAvailability), 5.0);
        assert!(mix.has_queries());
        let queries = Mix::parse("query=100").expect("valid");
        assert_eq!(queries.weight(Op::Book), 0.0);
        assert!(!Mix::parse("book=1").expect("valid").has_queries());
        assert!(Mix::parse("book=0").is_err());
        assert!(Mix::parse("fly=3").is_err());
        assert!(Mix::parse("book=-1").is_err());
        assert!(Mix::parse("book").is_err());
    }

    #[test]
    fn picks_in_proportion() {
        let mix = Mix::parse("book=75,get=25").expect("valid");
        let mut rng = SmallRng::seed_from_u64(1);
        let books = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == Op::Book)
            .count();
        assert!((7_200..7_800).contains(&books), "{books}");
        assert!((0..100).all(|_| mix.pick(&mut rng) != Op::Cancel));
    }
}
