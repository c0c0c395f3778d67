//! Times the read model's writer alone on a real log: the events are read
//! once from a command server into a file, then applied from memory to a
//! fresh SQLite file in batches, as the projector does during a catch-up,
//! with the writer thread's CPU time measured. No network, no stream: the
//! part of a catch-up that is SQLite and `apply_event`.
//!
//! usage: cargo run --release -p query-server --example replay_writer -- \
//!            COMMAND_URL EVENTS_FILE [BATCH [ROUNDS]]
//!
//! The events are fetched into EVENTS_FILE when it does not exist yet.
//! From the environment: REPLAY_DROP_INDEXES (comma-separated index names
//! dropped before the replay), REPLAY_WAL_RESTART_MIB (the writer's
//! `--wal-restart-mib`).
//! Speed is claimed from `loadgen catchup`, not from this (ADR 0005); it is
//! for profiling and for quick comparisons while changing the writer.

use std::{
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
    time::Instant,
};

use hotel_common::pb::{
    self, SubscribeRequest, event_stream_client::EventStreamClient, subscribe_response::Message,
};
use prost::Message as _;
use query_server::read_model::Writer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: replay_writer COMMAND_URL EVENTS_FILE [BATCH [ROUNDS]]"
    );
    let file = Path::new(&args[2]);
    let batch: usize = args.get(3).map_or(Ok(5000), |s| s.parse())?;
    let rounds: usize = args.get(4).map_or(Ok(1), |s| s.parse())?;
    if !file.exists() {
        fetch(&args[1], file).await?;
    }
    let events = load(file)?;
    eprintln!("{} events, batches of {batch}", events.len());
    for _ in 0..rounds {
        let dir = std::env::temp_dir().join(format!("replay-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("read-model.db");
        let (wall, cpu) = tokio::task::spawn_blocking({
            let path = path.clone();
            let events = events.clone();
            move || -> anyhow::Result<(f64, f64)> {
                let mut writer = Writer::open(&path)?;
                if let Ok(mib) = std::env::var("REPLAY_WAL_RESTART_MIB") {
                    writer.set_wal(query_server::read_model::WalSettings {
                        restart_at: mib.parse::<i64>()? * 1024 * 1024,
                        ..Default::default()
                    })?;
                }
                if let Ok(drop) = std::env::var("REPLAY_DROP_INDEXES") {
                    let conn = rusqlite::Connection::open(&path)?;
                    for index in drop.split(',').filter(|s| !s.is_empty()) {
                        conn.execute_batch(&format!("DROP INDEX {index}"))?;
                    }
                }
                let cpu_before = thread_cpu_seconds();
                let started = Instant::now();
                for chunk in events.chunks(batch) {
                    writer.apply_batch(chunk)?;
                }
                let wall = started.elapsed().as_secs_f64();
                let cpu = thread_cpu_seconds() - cpu_before;
                writer.close()?;
                Ok((wall, cpu))
            }
        })
        .await??;
        let n = events.len() as f64;
        println!(
            "{:.0} events/s, writer thread CPU {:.2} s = {:.2} us/event",
            n / wall,
            cpu,
            cpu / n * 1e6
        );
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Reads the whole log up to its head into `file`, length-delimited.
async fn fetch(url: &str, file: &Path) -> anyhow::Result<()> {
    let mut client = EventStreamClient::connect(url.to_owned())
        .await?
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut stream = client
        .subscribe(SubscribeRequest {
            from_position: 1,
            max_batch: 5000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = BufWriter::new(std::fs::File::create(file)?);
    let mut count = 0;
    while let Some(response) = stream.message().await? {
        match response.message {
            Some(Message::Events(batch)) => {
                for event in batch.events {
                    out.write_all(&event.encode_length_delimited_to_vec())?;
                    count += 1;
                }
            }
            Some(Message::CaughtUp(_)) => break,
            _ => {}
        }
    }
    out.flush()?;
    eprintln!("fetched {count} events into {}", file.display());
    Ok(())
}

fn load(file: &Path) -> anyhow::Result<Vec<pb::EventEnvelope>> {
    let mut bytes = Vec::new();
    BufReader::new(std::fs::File::open(file)?).read_to_end(&mut bytes)?;
    let mut buf = bytes.as_slice();
    let mut events = Vec::new();
    while !buf.is_empty() {
        events.push(pb::EventEnvelope::decode_length_delimited(&mut buf)?);
    }
    Ok(events)
}

/// User + system CPU time of the calling thread, from /proc.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')').
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}
