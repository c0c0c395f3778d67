//! Statements sent to MySQL as one multi-statement text query: one round
//! trip for all of a batch's writes and its COMMIT (ADR 0002).
//!
//! Values are written into the text as literals, never spliced in as
//! typed: strings and bytes as hex literals (`_utf8mb4 X'…'`, `X'…'`), so
//! no value can end a literal early whatever it holds and whatever the
//! session's `sql_mode`; numbers in decimal; dates as `'YYYY-MM-DD'`.
//! MySQL runs the statements in order and stops at the first that fails,
//! and tells which one it was: [`ScriptError::completed`] counts the
//! statements that had run.

use std::fmt::Write;

use sqlx::{Either, MySqlConnection, mysql::MySqlRow};
use time::Date;
use tokio_stream::StreamExt;

/// A value written into a statement as a SQL literal.
pub trait Literal {
    fn write_literal(&self, sql: &mut String);
}

impl Literal for i64 {
    fn write_literal(&self, sql: &mut String) {
        write!(sql, "{self}").expect("writing to a String");
    }
}

impl Literal for i32 {
    fn write_literal(&self, sql: &mut String) {
        write!(sql, "{self}").expect("writing to a String");
    }
}

impl Literal for str {
    fn write_literal(&self, sql: &mut String) {
        // Ids, codes, states: as they are, when nothing in them can end or
        // escape a literal; anything else in hex.
        if self
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@ ".contains(&b))
        {
            sql.reserve(self.len() + 2);
            sql.push('\'');
            sql.push_str(self);
            sql.push('\'');
        } else {
            sql.push_str("_utf8mb4 ");
            hex(self.as_bytes(), sql);
        }
    }
}

impl Literal for String {
    fn write_literal(&self, sql: &mut String) {
        self.as_str().write_literal(sql);
    }
}

impl Literal for [u8] {
    fn write_literal(&self, sql: &mut String) {
        hex(self, sql);
    }
}

impl Literal for Vec<u8> {
    fn write_literal(&self, sql: &mut String) {
        self.as_slice().write_literal(sql);
    }
}

impl Literal for Date {
    fn write_literal(&self, sql: &mut String) {
        // Digits and dashes only: nothing here can end the literal.
        write!(
            sql,
            "'{:04}-{:02}-{:02}'",
            self.year(),
            u8::from(self.month()),
            self.day()
        )
        .expect("writing to a String");
    }
}

impl<T: Literal + ?Sized> Literal for &T {
    fn write_literal(&self, sql: &mut String) {
        (**self).write_literal(sql);
    }
}

impl<T: Literal> Literal for Option<T> {
    fn write_literal(&self, sql: &mut String) {
        match self {
            Some(value) => value.write_literal(sql),
            None => sql.push_str("NULL"),
        }
    }
}

/// `X'…'`: every byte as two hex digits.
fn hex(bytes: &[u8], sql: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    sql.reserve(bytes.len() * 2 + 3);
    sql.push_str("X'");
    for byte in bytes {
        sql.push(char::from(DIGITS[usize::from(byte >> 4)]));
        sql.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    sql.push('\'');
}

/// Statements to run in one round trip.
#[derive(Debug, Default)]
pub struct Script {
    sql: String,
    statements: usize,
    /// Whether a statement has begun and not ended.
    open: bool,
}

/// The statement of a script that failed, and how many ran before it.
#[derive(Debug)]
pub struct ScriptError {
    /// Statements that had run when `error` came (0 when the first failed
    /// or the script never reached the server).
    pub completed: usize,
    pub error: sqlx::Error,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Statements ended so far.
    pub fn statements(&self) -> usize {
        self.statements
    }

    /// SQL text (from the program, never from a caller: values go through
    /// [`value`](Self::value)).
    pub fn sql(&mut self, text: &'static str) -> &mut Self {
        self.open = true;
        self.sql.push_str(text);
        self
    }

    pub fn value(&mut self, value: impl Literal) -> &mut Self {
        self.open = true;
        value.write_literal(&mut self.sql);
        self
    }

    /// ` VALUES (…), (…)`: one row per item, its values written by `row`.
    pub fn values<I, F>(&mut self, items: I, mut row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(&mut Row<'_>, I::Item),
    {
        self.sql(" VALUES ");
        for (index, item) in items.into_iter().enumerate() {
            if index > 0 {
                self.sql.push_str(", ");
            }
            self.sql.push('(');
            let mut values = Row {
                script: self,
                first: true,
            };
            row(&mut values, item);
            self.sql.push(')');
        }
        self
    }

    /// Writes each item with `write`, `separator` between them.
    pub fn each<I, F>(&mut self, items: I, separator: &'static str, mut write: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(&mut Self, I::Item),
    {
        for (index, item) in items.into_iter().enumerate() {
            if index > 0 {
                self.sql(separator);
            }
            write(self, item);
        }
        self
    }

    /// Ends the statement begun with [`sql`](Self::sql).
    pub fn end(&mut self) {
        debug_assert!(self.open, "ending a statement that was not begun");
        self.sql.push_str(";\n");
        self.statements += 1;
        self.open = false;
    }

    /// Runs every statement, in order, in one round trip. MySQL stops at the
    /// first that fails.
    pub async fn run(self, conn: &mut MySqlConnection) -> Result<(), ScriptError> {
        debug_assert!(!self.open, "a statement was left open");
        if self.statements == 0 {
            return Ok(());
        }
        let mut completed = 0;
        let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(self.sql)).execute_many(conn);
        loop {
            match results.next().await {
                Some(Ok(_)) => completed += 1,
                None => return Ok(()),
                Some(Err(error)) => return Err(ScriptError { completed, error }),
            }
        }
    }
}

impl Script {
    /// Runs every statement, in order, in one round trip, and returns each
    /// statement's rows (an empty list for one that returns none).
    pub async fn fetch(
        self,
        conn: &mut MySqlConnection,
    ) -> Result<Vec<Vec<MySqlRow>>, ScriptError> {
        debug_assert!(!self.open, "a statement was left open");
        let mut results = Vec::with_capacity(self.statements);
        if self.statements == 0 {
            return Ok(results);
        }
        let mut rows = Vec::new();
        let mut stream = sqlx::raw_sql(sqlx::AssertSqlSafe(self.sql)).fetch_many(conn);
        loop {
            match stream.next().await {
                Some(Ok(Either::Right(row))) => rows.push(row),
                Some(Ok(Either::Left(_))) => results.push(std::mem::take(&mut rows)),
                None => return Ok(results),
                Some(Err(error)) => {
                    return Err(ScriptError {
                        completed: results.len(),
                        error,
                    });
                }
            }
        }
    }
}

/// The values of one row of a [`Script::values`] list.
pub struct Row<'a> {
    script: &'a mut Script,
    first: bool,
}

impl Row<'_> {
    pub fn value(&mut self, value: impl Literal) -> &mut Self {
        if !self.first {
            self.script.sql.push_str(", ");
        }
        self.first = false;
        value.write_literal(&mut self.script.sql);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(value: impl Literal) -> String {
        let mut sql = String::new();
        value.write_literal(&mut sql);
        sql
    }

    #[test]
    fn values_become_literals_nothing_can_break_out_of() {
        assert_eq!(literal(-42_i64), "-42");
        assert_eq!(literal(7_i32), "7");
        assert_eq!(literal("a'b\\"), "_utf8mb4 X'6127625C'");
        assert_eq!(literal(""), "''");
        assert_eq!(literal(vec![0_u8, 255]), "X'00FF'");
        assert_eq!(literal(None::<i64>), "NULL");
        assert_eq!(literal(Some("é")), "_utf8mb4 X'C3A9'");
        assert_eq!(literal("h-1_a.b:c@d e"), "'h-1_a.b:c@d e'");
        let date = Date::from_calendar_date(2026, time::Month::March, 5).expect("a date");
        assert_eq!(literal(date), "'2026-03-05'");
    }

    #[test]
    fn statements_and_rows_are_separated() {
        let mut script = Script::new();
        script
            .sql("INSERT INTO t (a, b)")
            .values([(1_i64, "x"), (2, "y")], |row, (a, b)| {
                row.value(a).value(b);
            })
            .end();
        script
            .sql("UPDATE h SET p = ")
            .value(9_i64)
            .sql(" WHERE id = 1")
            .end();
        assert_eq!(script.statements(), 2);
        assert_eq!(
            script.sql,
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y');\n\
             UPDATE h SET p = 9 WHERE id = 1;\n"
        );
    }
}
