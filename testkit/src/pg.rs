//! Per-test PostgreSQL databases, cloned from a migrated template so tests run in parallel and
//! leave nothing shared behind. Needs `LOGLINE_TEST_DATABASE_URL` (a superuser URL; the README's
//! test command sets it): without it the test fails, it never silently skips.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The superuser URL of the test server.
pub fn admin_url() -> String {
    match std::env::var("LOGLINE_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "LOGLINE_TEST_DATABASE_URL is not set: PostgreSQL tests need a server. \
             Run the README's test command (scripts/test.sh), which starts one."
        ),
    }
}

/// Replaces the database name of a URL.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base
        .rfind('/')
        .filter(|i| *i > base.find("://").map_or(0, |s| s + 2))
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..cut], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The template name changes whenever a migration changes, so a stale template is never used.
fn template_name() -> String {
    let mut h = blake3::Hasher::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/postgres");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        h.update(&std::fs::read(&f).unwrap_or_default());
    }
    format!("logline_tpl_{}", &h.finalize().to_hex()[..16])
}

/// Creates a fresh, migrated database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {admin}: {e}"));
    let tpl = template_name();
    // One process builds the template; the others wait on the advisory lock.
    sqlx::query("SELECT pg_advisory_lock(727274)")
        .execute(&mut conn)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&tpl)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    if !exists {
        let building = format!("{tpl}_building");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{building}\""
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{building}\""
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        let store = ledger::store::postgres::PgStore::connect(
            &with_db(&admin, &building),
            ledger::crypto::NodeKey::generate(),
        )
        .await
        .unwrap_or_else(|e| panic!("migrating the template database failed: {e}"));
        store.pool().close().await;
        drop(store);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{tpl}\""
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    drop_stale_databases(&mut conn).await;
    sqlx::query("SELECT pg_advisory_unlock(727274)")
        .execute(&mut conn)
        .await
        .unwrap();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{name}\" TEMPLATE \"{tpl}\""
    )))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    with_db(&admin, &name)
}

/// Test databases are never dropped by the test that made one (a failing test would leave it
/// anyway), so each new one sweeps those older than a few hours: a developer's server would
/// otherwise fill the disk over a day of runs. The age is read from the UUIDv7 in the name.
async fn drop_stale_databases(conn: &mut PgConnection) {
    const MAX_AGE_MS: u64 = 3 * 3600 * 1000;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for name in names {
        let created_ms = name
            .strip_prefix("t_")
            .and_then(|hex| uuid::Uuid::try_parse(hex).ok())
            .and_then(|u| u.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs * 1000 + u64::from(nanos) / 1_000_000
            });
        if created_ms.is_some_and(|c| now_ms.saturating_sub(c) > MAX_AGE_MS) {
            // Best effort: a database still in use by a long test is simply left for later.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\""
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}
