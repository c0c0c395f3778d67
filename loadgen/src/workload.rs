//! `loadgen run`: the hotel workload. Bookings go to the hotels of `setup`,
//! a share of them (`--contention`) to one hot room type and night range;
//! cancellations and check-ins act on reservations this run booked; queries
//! read them back from the query server.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use hotel_common::{
    dates,
    pb::{
        self, command_service_client::CommandServiceClient,
        query_service_client::QueryServiceClient,
    },
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use time::Date;
use uuid::Uuid;

use crate::{
    cli::{self, AuthArgs, Conn, LoadArgs},
    driver::{self, Load, Stop, Worker},
    hotels::{HotelArgs, Hotels, Stay},
    mix::{Mix, Op},
    stats::{Recorder, RunReport},
};

/// Reservations remembered for GetReservation (the most recent ones).
const RECENT: usize = 10_000;
/// Most reservations kept waiting to be cancelled or checked in.
const POOL: usize = 200_000;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// URL of the command server; several, separated by commas, spread the
    /// connections over several instances on one database.
    #[arg(
        long,
        env = "LOADGEN_COMMAND_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub command_url: String,

    /// URL of the query server (used when the mix has queries).
    #[arg(
        long,
        env = "LOADGEN_QUERY_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub query_url: String,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub hotels: HotelArgs,

    #[command(flatten)]
    pub load: LoadArgs,

    /// Operation weights: book, cancel, checkin, and query (split evenly
    /// over get, availability and search, which can also be given one by
    /// one).
    #[arg(long, default_value = "book=70,cancel=10,checkin=5,query=15", value_parser = Mix::parse)]
    pub mix: Mix,

    /// Share of bookings aimed at one hot room type and night range (0 to
    /// 1): they contend for the same rows and fill its waiting list.
    #[arg(long, default_value_t = 0.2)]
    pub contention: f64,

    /// Bookings start on a day from tomorrow up to this many days ahead
    /// (at most 700).
    #[arg(long, default_value_t = 180)]
    pub days: i64,

    /// Bookings made before the measured load when the mix has queries, so
    /// that GetReservation has reservations to read (0 for none).
    #[arg(long, default_value_t = 200)]
    pub seed: u64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let report = run_load(&args).await?;
    report.print(args.load.json)
}

/// Runs the workload of `args` and reports on it.
pub async fn run_load(args: &RunArgs) -> anyhow::Result<RunReport> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.contention),
        "--contention must be between 0 and 1"
    );
    let shared = Arc::new(Shared::new(
        Hotels::new(&args.hotels),
        &args.mix,
        args.contention,
        args.days.clamp(1, 700),
    ));
    let clients = Clients::connect(
        &args.command_url,
        args.mix.has_queries().then_some(args.query_url.as_str()),
        args.load.channels(),
        args.load.timeout,
        &args.auth,
    )
    .await?;
    let workers = args.load.workers();

    if args.mix.has_queries() && args.seed > 0 {
        seed(&shared, &clients, workers, args.seed).await?;
    }

    let hotel_workers = (0..workers)
        .map(|i| HotelWorker::new(shared.clone(), args.mix.clone(), &clients, i))
        .collect();
    let (recorder, elapsed) = driver::drive(&args.load.load("run"), hotel_workers).await;
    let mut report = RunReport::new(
        "run",
        args.load.concurrency,
        args.load.rate,
        elapsed,
        &recorder,
    );
    report.mix = Some(args.mix.to_string());
    let fallbacks = shared.fallbacks.load(Ordering::Relaxed);
    if fallbacks > 0 {
        report.notes.push(format!(
            "{fallbacks} cancel/check-in/get operations found no reservation of this run to act on and booked instead"
        ));
    }
    Ok(report)
}

/// Books `count` reservations before the measured load and waits until the
/// query server has them all.
async fn seed(
    shared: &Arc<Shared>,
    clients: &Clients,
    workers: usize,
    count: u64,
) -> anyhow::Result<()> {
    let book_only = Mix::parse("book=1").expect("a valid literal mix");
    let seeders = (0..workers.min(16))
        .map(|i| HotelWorker::new(shared.clone(), book_only.clone(), clients, i))
        .collect();
    let load = Load {
        rate: None,
        stop: Stop::Count(count),
        label: "seed".into(),
        progress: false,
    };
    let (recorder, _) = driver::drive(&load, seeders).await;
    anyhow::ensure!(
        recorder.failures() == 0,
        "{} of {count} seed bookings failed: is `loadgen setup` done with the same --hotels, --room-types and --prefix?",
        recorder.failures()
    );
    let last = shared.last_position();
    let mut queries = clients
        .queries
        .first()
        .cloned()
        .map(QueryServiceClient::new)
        .context("no query server connection")?;
    // Read-your-writes: a GetReservation at the last seed's position
    // returns once the query server has applied every seed.
    let latest = shared.recent_reservation(&mut SmallRng::from_os_rng());
    if let Some((id, _)) = latest {
        let mut get = tonic::Request::new(pb::GetReservationRequest {
            reservation_id: id,
            min_position: last,
        });
        get.set_timeout(Duration::from_secs(30));
        queries
            .get_reservation(get)
            .await
            .context("waiting for the query server to apply the seed bookings")?;
    }
    Ok(())
}

/// Connections to the servers, shared round robin by the workers.
pub struct Clients {
    pub commands: Vec<Conn>,
    pub queries: Vec<Conn>,
}

impl Clients {
    /// `n` connections to the command server, and as many to the query
    /// server when `query_url` is given.
    pub async fn connect(
        command_url: &str,
        query_url: Option<&str>,
        n: usize,
        timeout: Duration,
        auth: &AuthArgs,
    ) -> anyhow::Result<Self> {
        // Several command servers: connections alternate between them.
        let urls: Vec<&str> = command_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect();
        let mut per_url = Vec::with_capacity(urls.len());
        for url in &urls {
            let share = n.div_ceil(urls.len().max(1));
            per_url.push(cli::connect(url, share, timeout, auth).await?.into_iter());
        }
        let mut commands = Vec::with_capacity(n);
        while commands.len() < n.max(1) {
            let before = commands.len();
            for conns in &mut per_url {
                commands.extend(conns.next());
            }
            if commands.len() == before {
                break;
            }
        }
        let queries = match query_url {
            Some(url) => cli::connect(url, n, timeout, auth).await?,
            None => Vec::new(),
        };
        Ok(Self { commands, queries })
    }
}

/// What the workers share: the data set and the reservations booked so far.
pub struct Shared {
    /// The hotels and room types `setup` made.
    hotels: Hotels,
    /// Check-in date of arrivals (UTC).
    today: Date,
    /// Bookings start at most this many days ahead.
    window_days: i64,
    /// Share of bookings aimed at the hot stay.
    contention: f64,
    /// Share of the other bookings that start today, so that check-ins have
    /// arrivals to check in.
    today_share: f64,
    /// Confirmed or waitlisted reservations that can be cancelled.
    cancellable: Mutex<Vec<String>>,
    /// Confirmed reservations starting today that can be checked in.
    arrivals: Mutex<Vec<String>>,
    /// Recently booked reservations and the position of their booking.
    recent: Mutex<VecDeque<(String, i64)>>,
    /// Highest position seen in a command reply.
    last_position: AtomicU64,
    /// Operations that found no reservation to act on and booked instead.
    fallbacks: AtomicU64,
}

impl Shared {
    pub fn new(hotels: Hotels, mix: &Mix, contention: f64, window_days: i64) -> Self {
        let book = mix.weight(Op::Book);
        let check_in = mix.weight(Op::CheckIn);
        // Twice as many arrivals as check-ins need: some are waitlisted.
        let today_share = if book > 0.0 {
            (2.0 * check_in / book).min(0.5)
        } else {
            0.5
        };
        Self {
            hotels,
            today: dates::today_utc(),
            window_days,
            contention,
            today_share,
            cancellable: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            recent: Mutex::new(VecDeque::new()),
            last_position: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }
    }

    pub fn last_position(&self) -> i64 {
        self.last_position.load(Ordering::Relaxed) as i64
    }

    fn pick_stay(&self, rng: &mut impl Rng) -> Stay {
        let roll: f64 = rng.random();
        if roll < self.contention {
            self.hotels.hot_stay(self.today, self.window_days)
        } else if rng.random::<f64>() < self.today_share {
            self.hotels.stay_from(rng, self.today, 0)
        } else {
            self.hotels.random_stay(rng, self.today, self.window_days)
        }
    }

    fn booked(&self, stay: &Stay, reply: &pb::BookRoomResponse) {
        let arrival = reply.status == pb::ReservationStatus::Confirmed as i32
            && stay.check_in == self.today
            && *stay != self.hotels.hot_stay(self.today, self.window_days);
        let pool = if arrival {
            &self.arrivals
        } else {
            &self.cancellable
        };
        push_bounded(pool, reply.reservation_id.clone());
        let mut recent = lock(&self.recent);
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back((reply.reservation_id.clone(), reply.position));
        drop(recent);
        self.last_position
            .fetch_max(reply.position.max(0) as u64, Ordering::Relaxed);
    }

    fn recent_reservation(&self, rng: &mut impl Rng) -> Option<(String, i64)> {
        let recent = lock(&self.recent);
        if recent.is_empty() {
            return None;
        }
        recent.get(rng.random_range(0..recent.len())).cloned()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked mid-push leaves a usable list behind.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn push_bounded(pool: &Mutex<Vec<String>>, id: String) {
    let mut pool = lock(pool);
    if pool.len() < POOL {
        pool.push(id);
    }
}

fn take_random(pool: &Mutex<Vec<String>>, rng: &mut impl Rng) -> Option<String> {
    let mut pool = lock(pool);
    if pool.is_empty() {
        return None;
    }
    let i = rng.random_range(0..pool.len());
    Some(pool.swap_remove(i))
}

/// One worker of the hotel workload.
pub struct HotelWorker {
    shared: Arc<Shared>,
    mix: Mix,
    commands: CommandServiceClient<Conn>,
    /// `None` when the mix has no queries.
    queries: Option<QueryServiceClient<Conn>>,
    rng: SmallRng,
}

/// A booking's reply, for the lag measurement.
pub struct Booked {
    pub reservation_id: String,
    pub position: i64,
    /// When the reply arrived.
    pub replied_at: Instant,
}

impl HotelWorker {
    pub fn new(shared: Arc<Shared>, mix: Mix, clients: &Clients, index: usize) -> Self {
        let pick = |channels: &Vec<Conn>| channels.get(index % channels.len().max(1)).cloned();
        Self {
            shared,
            mix,
            commands: CommandServiceClient::new(
                pick(&clients.commands).expect("at least one command connection"),
            ),
            queries: pick(&clients.queries).map(QueryServiceClient::new),
            rng: SmallRng::from_os_rng(),
        }
    }

    /// Books a stay chosen by the workload.
    pub async fn book_any(
        &mut self,
        recorder: &mut Recorder,
        scheduled: Instant,
    ) -> Option<Booked> {
        let stay = self.shared.pick_stay(&mut self.rng);
        self.book(recorder, scheduled, stay).await
    }

    async fn book(
        &mut self,
        recorder: &mut Recorder,
        scheduled: Instant,
        stay: Stay,
    ) -> Option<Booked> {
        let hotels = &self.shared.hotels;
        let guest = self.rng.random_range(0..10_000);
        let request = pb::BookRoomRequest {
            command_id: Uuid::new_v4().to_string(),
            hotel_id: hotels.hotel_id(stay.hotel),
            room_type_code: hotels.room_code(stay.room_type),
            check_in: dates::format(stay.check_in),
            check_out: dates::format(stay.check_out()),
            guest: Some(pb::Guest {
                guest_id: format!("lg-g{guest}"),
                name: format!("Guest {guest}"),
                email: format!("guest{guest}@example.com"),
            }),
            guests: self.rng.random_range(1..=2),
            priority: 0,
            correlation_id: String::new(),
        };
        let reply = self.commands.book_room(request).await;
        let replied_at = Instant::now();
        recorder.outcome("BookRoom", replied_at - scheduled, &reply);
        let reply = reply.ok()?.into_inner();
        self.shared.booked(&stay, &reply);
        Some(Booked {
            reservation_id: reply.reservation_id,
            position: reply.position,
            replied_at,
        })
    }

    /// Books instead of an operation that found nothing to act on.
    async fn fall_back(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        self.shared.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.book_any(recorder, scheduled).await;
    }

    async fn cancel(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        let Some(reservation_id) = take_random(&self.shared.cancellable, &mut self.rng) else {
            return self.fall_back(recorder, scheduled).await;
        };
        let request = pb::CancelReservationRequest {
            precondition: None,
            command_id: Uuid::new_v4().to_string(),
            reservation_id,
            reason: "loadgen".to_owned(),
            correlation_id: String::new(),
        };
        let reply = self.commands.cancel_reservation(request).await;
        recorder.outcome("CancelReservation", scheduled.elapsed(), &reply);
    }

    async fn check_in(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        let Some(reservation_id) = take_random(&self.shared.arrivals, &mut self.rng) else {
            return self.fall_back(recorder, scheduled).await;
        };
        let request = pb::CheckInRequest {
            precondition: None,
            command_id: Uuid::new_v4().to_string(),
            reservation_id,
            correlation_id: String::new(),
        };
        let reply = self.commands.check_in(request).await;
        recorder.outcome("CheckIn", scheduled.elapsed(), &reply);
    }

    /// Reads a reservation back at (at least) the position of its booking.
    pub async fn get_reservation(
        &mut self,
        recorder: &mut Recorder,
        scheduled: Instant,
        reservation_id: String,
        min_position: i64,
    ) -> bool {
        let Some(queries) = self.queries.as_mut() else {
            return false;
        };
        let request = pb::GetReservationRequest {
            reservation_id,
            min_position,
        };
        let reply = queries.get_reservation(request).await;
        recorder.outcome("GetReservation", scheduled.elapsed(), &reply);
        reply.is_ok()
    }

    async fn get_availability(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        let hotels = &self.shared.hotels;
        let from = self.shared.today
            + time::Duration::days(self.rng.random_range(0..self.shared.window_days));
        let request = pb::GetAvailabilityRequest {
            hotel_id: hotels.hotel_id(self.rng.random_range(0..hotels.hotels)),
            room_type_code: hotels.room_code(self.rng.random_range(0..hotels.room_types)),
            from_date: dates::format(from),
            to_date: dates::format(from + time::Duration::days(7)),
            min_position: 0,
        };
        if let Some(queries) = self.queries.as_mut() {
            let reply = queries.get_availability(request).await;
            recorder.outcome("GetAvailability", scheduled.elapsed(), &reply);
        }
    }

    async fn search(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        let hotels = &self.shared.hotels;
        let stay = hotels.random_stay(&mut self.rng, self.shared.today, self.shared.window_days);
        let request = pb::SearchAvailabilityRequest {
            city: hotels.random_city(&mut self.rng).to_owned(),
            check_in: dates::format(stay.check_in),
            check_out: dates::format(stay.check_out()),
            guests: self.rng.random_range(1..=2),
            page_size: 20,
            page_token: String::new(),
            min_position: 0,
        };
        if let Some(queries) = self.queries.as_mut() {
            let reply = queries.search_availability(request).await;
            recorder.outcome("SearchAvailability", scheduled.elapsed(), &reply);
        }
    }
}

impl Worker for HotelWorker {
    async fn step(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        match self.mix.pick(&mut self.rng) {
            Op::Book => {
                self.book_any(recorder, scheduled).await;
            }
            Op::Cancel => self.cancel(recorder, scheduled).await,
            Op::CheckIn => self.check_in(recorder, scheduled).await,
            Op::GetReservation => match self.shared.recent_reservation(&mut self.rng) {
                Some((id, position)) => {
                    self.get_reservation(recorder, scheduled, id, position)
                        .await;
                }
                None => self.fall_back(recorder, scheduled).await,
            },
            Op::GetAvailability => self.get_availability(recorder, scheduled).await,
            Op::SearchAvailability => self.search(recorder, scheduled).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(mix: &str, contention: f64) -> Shared {
        let hotels = Hotels::new(&HotelArgs {
            hotels: 4,
            room_types: 2,
            cities: 2,
            prefix: "t".into(),
        });
        Shared::new(hotels, &Mix::parse(mix).expect("mix"), contention, 30)
    }

    #[test]
    fn contention_aims_that_share_at_the_hot_stay() {
        let shared = shared("book=1", 0.3);
        let hot = shared.hotels.hot_stay(shared.today, 30);
        let mut rng = SmallRng::seed_from_u64(3);
        let hits = (0..10_000)
            .filter(|_| shared.pick_stay(&mut rng) == hot)
            .count();
        assert!((2_800..3_300).contains(&hits), "{hits}");
    }

    #[test]
    fn confirmed_arrivals_feed_check_ins_and_the_rest_cancels() {
        let shared = shared("book=70,checkin=5", 0.0);
        assert!((shared.today_share - 10.0 / 70.0).abs() < 1e-9);
        let today = Stay {
            hotel: 1,
            room_type: 1,
            check_in: shared.today,
            nights: 1,
        };
        let reply = |id: &str, status: pb::ReservationStatus, position| pb::BookRoomResponse {
            reservation_id: id.to_owned(),
            status: status as i32,
            total_price: None,
            position,
            replayed: false,
        };
        shared.booked(&today, &reply("a", pb::ReservationStatus::Confirmed, 4));
        shared.booked(&today, &reply("b", pb::ReservationStatus::Waitlisted, 9));
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(
            take_random(&shared.arrivals, &mut rng).as_deref(),
            Some("a")
        );
        assert_eq!(
            take_random(&shared.cancellable, &mut rng).as_deref(),
            Some("b")
        );
        assert_eq!(take_random(&shared.cancellable, &mut rng), None);
        assert_eq!(shared.last_position(), 9);
        assert!(shared.recent_reservation(&mut rng).is_some());
    }
}
