//! `loadgen lag`: projection lag, commit to queryable. At a steady rate,
//! each operation books a room, notes when the reply (with its position)
//! arrived, and at once asks the query server for that reservation with
//! `min_position` = the position; the query server answers as soon as its
//! read model has applied the position. The lag is the time from the reply
//! to that answer: it includes the query's own round trip (a fraction of a
//! millisecond here), so it slightly overstates the true lag.

use std::{sync::Arc, time::Duration, time::Instant};

use clap::Args;

use crate::{
    cli::{AuthArgs, parse_duration, parse_rate},
    driver::{self, Load, Stop, Worker},
    hotels::{HotelArgs, Hotels},
    mix::Mix,
    stats::{LAG, Recorder, RunReport},
    workload::{Clients, HotelWorker, Shared},
};

#[derive(Debug, Clone, Args)]
pub struct LagArgs {
    /// URL of the command server.
    #[arg(
        long,
        env = "LOADGEN_COMMAND_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub command_url: String,

    /// URL of the query server.
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

    /// Bookings per second (steady, open loop).
    #[arg(long, default_value = "200", value_parser = parse_rate)]
    pub rate: f64,

    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Most bookings in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,

    /// Bookings start on a day from tomorrow up to this many days ahead.
    #[arg(long, default_value_t = 180)]
    pub days: i64,

    /// Deadline of each call (and so the longest lag that can be measured).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: LagArgs) -> anyhow::Result<()> {
    let book = Mix::parse("book=1").expect("a valid literal mix");
    let shared = Arc::new(Shared::new(
        Hotels::new(&args.hotels),
        &book,
        0.0,
        args.days.clamp(1, 700),
    ));
    let workers = args.concurrency.max(1);
    let clients = Clients::connect(
        &args.command_url,
        Some(&args.query_url),
        crate::cli::channel_count(workers, 16).min(8),
        args.timeout,
        &args.auth,
    )
    .await?;
    let lag_workers = (0..workers)
        .map(|i| LagWorker {
            worker: HotelWorker::new(shared.clone(), book.clone(), &clients, i),
        })
        .collect();
    let load = Load {
        rate: Some(args.rate),
        stop: Stop::After(args.duration),
        label: "lag".into(),
        progress: true,
    };
    let (recorder, elapsed) = driver::drive(&load, lag_workers).await;
    let mut report = RunReport::new("lag", workers, Some(args.rate), elapsed, &recorder);
    report.notes.push(
        "ProjectionLag: from a BookRoom reply to the answer of GetReservation(min_position = its position)"
            .to_owned(),
    );
    report.print(args.json)
}

struct LagWorker {
    worker: HotelWorker,
}

impl Worker for LagWorker {
    async fn step(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        let Some(booked) = self.worker.book_any(recorder, scheduled).await else {
            return;
        };
        let asked = Instant::now();
        let found = self
            .worker
            .get_reservation(recorder, asked, booked.reservation_id, booked.position)
            .await;
        if found {
            recorder.ok(LAG, booked.replied_at.elapsed());
        }
    }
}
