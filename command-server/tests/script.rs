//! The writer's write script (store/script.rs): a batch's writes and its
//! COMMIT in one round trip, values as literals. These tests run scripts on
//! MariaDB: every value comes back byte for byte, whatever it holds, and a
//! failing statement stops the script there and is named.

use command_server::store::script::Script;
use command_server::testing::TestDb;
use sqlx::{Connection, Executor, MySqlConnection, Row};
use time::{Date, Month};

const TABLE: &str = "CREATE TABLE literals (id BIGINT PRIMARY KEY, text VARCHAR(200) \
                     CHARACTER SET utf8mb4 NULL, bytes BLOB NULL, day DATE NULL, n INT NULL)";

async fn connection(db: &TestDb) -> MySqlConnection {
    let mut conn = MySqlConnection::connect(&db.url).await.expect("connect");
    conn.execute(TABLE).await.expect("create table");
    conn
}

#[tokio::test]
async fn every_value_comes_back_as_it_was_written() {
    let db = TestDb::create().await;
    let mut conn = connection(&db).await;
    let texts = [
        "",
        "plain-id_1.2:3@x y",
        "O'Brien",
        "back\\slash\\",
        "\\'; DROP TABLE literals; --",
        "quote \" and ` and \n newline \r \t \0 nul",
        "Zoë, 東京, 🏨",
        "'",
    ];
    let bytes: Vec<Vec<u8>> = vec![vec![], vec![0, 39, 92, 255, 10], (0..=255).collect()];
    let day = Date::from_calendar_date(2027, Month::February, 28).expect("a date");

    let mut script = Script::new();
    script
        .sql("INSERT INTO literals (id, text, bytes, day, n)")
        .values(texts.iter().enumerate(), |row, (index, text)| {
            row.value(index as i64)
                .value(*text)
                .value(bytes.get(index))
                .value(day)
                .value(Some(-(index as i32)));
        })
        .end();
    script
        .sql("INSERT INTO literals (id, text, bytes, day, n)")
        .values([100_i64], |row, id| {
            row.value(id)
                .value(None::<&str>)
                .value(None::<Vec<u8>>)
                .value(None::<Date>)
                .value(None::<i32>);
        })
        .end();
    script.run(&mut conn).await.expect("the script runs");

    let rows = sqlx::query("SELECT id, text, bytes, day, n FROM literals ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("read back");
    assert_eq!(rows.len(), texts.len() + 1);
    for (index, text) in texts.iter().enumerate() {
        let row = &rows[index];
        assert_eq!(row.get::<i64, _>("id"), index as i64);
        assert_eq!(row.get::<Option<String>, _>("text").as_deref(), Some(*text));
        assert_eq!(
            row.get::<Option<Vec<u8>>, _>("bytes").as_ref(),
            bytes.get(index)
        );
        assert_eq!(row.get::<Option<Date>, _>("day"), Some(day));
        assert_eq!(row.get::<Option<i32>, _>("n"), Some(-(index as i32)));
    }
    let nulls = &rows[texts.len()];
    assert_eq!(nulls.get::<Option<String>, _>("text"), None);
    assert_eq!(nulls.get::<Option<Vec<u8>>, _>("bytes"), None);
    assert_eq!(nulls.get::<Option<Date>, _>("day"), None);
    assert_eq!(nulls.get::<Option<i32>, _>("n"), None);
    db.cleanup().await;
}

#[tokio::test]
async fn a_failing_statement_stops_the_script_and_is_named() {
    let db = TestDb::create().await;
    let mut conn = connection(&db).await;
    conn.execute("SET SESSION autocommit = 0")
        .await
        .expect("autocommit off");
    let insert = |script: &mut Script, id: i64| {
        script
            .sql("INSERT INTO literals (id, n)")
            .values([id], |row, id| {
                row.value(id).value(1_i32);
            })
            .end();
    };
    let mut script = Script::new();
    insert(&mut script, 1);
    insert(&mut script, 1); // the same key again: refused
    insert(&mut script, 2);
    script.sql("COMMIT").end();
    assert_eq!(script.statements(), 4);
    let failed = script.run(&mut conn).await.expect_err("a duplicate key");
    assert_eq!(
        failed.completed, 1,
        "the first insert ran, the second failed"
    );
    let sqlx::Error::Database(error) = &failed.error else {
        panic!("a database error, not {:?}", failed.error);
    };
    assert!(error.is_unique_violation(), "{error}");
    // The third insert did not run; the first did, in the open transaction.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM literals ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("read inside the transaction");
    assert_eq!(ids, [1]);
    // Nor did the COMMIT: dropping the session rolls the first insert back.
    drop(conn);
    assert_eq!(db.count("SELECT COUNT(*) FROM literals").await, 0);
    db.cleanup().await;
}
