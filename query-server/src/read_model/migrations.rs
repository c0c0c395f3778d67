//! Schema migrations: embedded `.sql` files applied in order at start,
//! tracked with `PRAGMA user_version`.

use anyhow::Context;
use rusqlite::Connection;

/// Every migration, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_read_model",
        include_str!("../../migrations/0001_read_model.sql"),
    ),
    (
        "0002_search_room_types",
        include_str!("../../migrations/0002_search_room_types.sql"),
    ),
    (
        "0003_waitlist_by_position",
        include_str!("../../migrations/0003_waitlist_by_position.sql"),
    ),
    (
        "0004_reservations_status_check",
        include_str!("../../migrations/0004_reservations_status_check.sql"),
    ),
    (
        "0005_checkpoint_event_id",
        include_str!("../../migrations/0005_checkpoint_event_id.sql"),
    ),
    (
        "0006_versions",
        include_str!("../../migrations/0006_versions.sql"),
    ),
    (
        "0007_reservation_changes_by_time",
        include_str!("../../migrations/0007_reservation_changes_by_time.sql"),
    ),
    (
        "0008_nights_by_integer_keys",
        include_str!("../../migrations/0008_nights_by_integer_keys.sql"),
    ),
];

/// Applies the migrations the file has not seen yet, each in its own
/// transaction together with the version bump.
pub fn run(conn: &mut Connection) -> anyhow::Result<()> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .context("reading the schema version")?;
    let current = usize::try_from(current).context("a negative schema version")?;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "the read model has schema version {current}, newer than this binary knows ({}); \
             use a newer query-server or rebuild the file",
            MIGRATIONS.len()
        );
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {name}"))?;
        tx.pragma_update(None, "user_version", i64::try_from(index + 1)?)?;
        tx.commit()
            .with_context(|| format!("committing migration {name}"))?;
        tracing::info!(migration = name, "applied read model migration");
    }
    Ok(())
}
