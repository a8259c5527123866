//! No hot path scans a whole table: both databases are asked how they would
//! run every statement of `Store::hot_queries` (the request paths, event
//! delivery, the sweep), and none may read a table (or an index) from end to
//! end. With a million users such a statement costs seconds where a lookup
//! costs microseconds; the benchmark `benches/scale.rs` measures that.

use crate::common::TestDb;
use chatgate::store::{Store, hot_queries};
use sqlx::{Acquire as _, Row as _};

/// How many `$n` parameters a statement takes.
fn parameters(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut max = 0;
    for (i, _) in sql.match_indices('$') {
        let digits: String = bytes[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|b| *b as char)
            .collect();
        if let Ok(n) = digits.parse::<usize>() {
            max = max.max(n);
        }
    }
    max
}

/// SQLite's plan, one line per step; a full scan is a `SCAN` step
/// (`SEARCH` uses an index).
async fn sqlite_scans(pool: &sqlx::SqlitePool, sql: &str) -> (String, Vec<String>) {
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(explain));
    for _ in 0..parameters(sql) {
        query = query.bind(None::<String>);
    }
    let rows = query.fetch_all(pool).await.unwrap();
    let steps: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
    let scans = steps
        .iter()
        .filter(|d| d.starts_with("SCAN ") && !d.starts_with("SCAN CONSTANT ROW"))
        .cloned()
        .collect();
    (steps.join("\n"), scans)
}

/// PostgreSQL's generic plan (the one a prepared statement gets, whatever
/// the parameters), with sequential scans discouraged so that any index that
/// serves the statement is used: a `Seq Scan`, or an index scan without an
/// index condition, remains only where none can.
async fn postgres_scans(pool: &sqlx::PgPool, sql: &str) -> (String, Vec<String>) {
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    for setup in [
        "SET LOCAL enable_seqscan = off",
        "SET LOCAL plan_cache_mode = force_generic_plan",
    ] {
        sqlx::raw_sql(setup).execute(&mut *tx).await.unwrap();
    }
    let prepare = format!("PREPARE hot_query AS {sql}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
        .execute(&mut *tx)
        .await
        .unwrap();
    let nulls = vec!["NULL"; parameters(sql)].join(", ");
    let execute = if nulls.is_empty() {
        "EXPLAIN (FORMAT JSON) EXECUTE hot_query".to_string()
    } else {
        format!("EXPLAIN (FORMAT JSON) EXECUTE hot_query({nulls})")
    };
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(execute))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let plan: serde_json::Value =
        serde_json::from_str(&row.try_get_unchecked::<String, _>(0).unwrap()).unwrap();
    // Prepared statements outlive transactions.
    sqlx::raw_sql("DEALLOCATE hot_query")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut scans = Vec::new();
    collect_pg_scans(&plan[0]["Plan"], &mut scans);
    (serde_json::to_string_pretty(&plan).unwrap(), scans)
}

fn collect_pg_scans(node: &serde_json::Value, scans: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let relation = node["Relation Name"]
        .as_str()
        .or(node["Index Name"].as_str())
        .unwrap_or_default();
    let unbounded_index = matches!(kind, "Index Scan" | "Index Only Scan" | "Bitmap Index Scan")
        && node.get("Index Cond").is_none();
    if kind == "Seq Scan" || unbounded_index {
        scans.push(format!("{kind} on {relation}"));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        collect_pg_scans(child, scans);
    }
}

async fn no_hot_query_scans_a_whole_table(db: &TestDb) {
    let store = db.store().await;
    let queries = hot_queries();
    assert!(
        queries.len() > 30,
        "the catalogue names every hot statement"
    );
    let mut offenders = Vec::new();
    for (name, sql) in queries {
        let (plan, scans) = match &store {
            Store::Sqlite(_) if name.contains("(PostgreSQL)") => continue,
            Store::Postgres(_) if name.contains("(SQLite)") => continue,
            Store::Sqlite(pool) => sqlite_scans(pool, sql).await,
            Store::Postgres(pool) => postgres_scans(pool, sql).await,
        };
        if !scans.is_empty() {
            offenders.push(format!("{name}: {scans:?}\n{sql}\n{plan}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "full scans on hot paths:\n\n{}",
        offenders.join("\n\n")
    );
}

/// The check itself catches a scan: a statement on an unindexed column.
async fn the_check_sees_a_full_scan(db: &TestDb) {
    let store = db.store().await;
    let sql = "SELECT app FROM vault_entries WHERE scope = $1";
    let (_, scans) = match &store {
        Store::Sqlite(pool) => sqlite_scans(pool, sql).await,
        Store::Postgres(pool) => postgres_scans(pool, sql).await,
    };
    assert!(!scans.is_empty(), "a scan of vault_entries was not seen");
}

backend_tests!(no_hot_query_scans_a_whole_table, the_check_sees_a_full_scan);
