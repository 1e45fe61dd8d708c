use super::schema::FORGET_SOURCES;
use super::*;

/// SQLite's plan for `sql`, its steps one per line.
fn plan(conn: &Connection, sql: &str) -> String {
    let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let unbound = vec![Value::Null; explain.parameter_count()];
    let steps: Vec<String> = explain
        .query_map(params_from_iter(unbound), |row| row.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    steps.join("\n")
}

#[test]
fn unfinished_and_ended_contacts_are_found_through_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let conn = connect(&dir.path().join("callpulse.db")).unwrap();
    create_schema(&conn).unwrap();
    let unfinished = plan(&conn, UNFINISHED);
    assert!(unfinished.contains("contacts_unfinished"), "{unfinished}");
    let forget = plan(&conn, FORGET_SOURCES);
    assert!(forget.contains("events_ended"), "{forget}");
}

#[test]
fn a_file_of_schema_1_gains_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callpulse.db");
    let conn = connect(&path).unwrap();
    create_schema(&conn).unwrap();
    conn.execute_batch(
        "DROP INDEX contacts_unfinished; DROP INDEX events_ended; DROP INDEX contacts_in_order; \
             DROP TABLE sources_forgotten; PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    drop(SqliteDb::open(&path).unwrap());
    let conn = connect(&path).unwrap();
    let found: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN \
                 ('contacts_unfinished', 'events_ended', 'contacts_in_order', 'sources_forgotten')",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(found, 4);
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}
