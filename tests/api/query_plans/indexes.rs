//! The schema's indexes, for the check that each one earns its keep.

use sqlx::PgPool;

#[derive(Debug)]
pub(super) struct Index {
    pub(super) name: String,
    pub(super) table: String,
    pub(super) unique: bool,
    /// Its leading column is a foreign key's.
    pub(super) leads_with_foreign_key: bool,
    /// It covers the rows of a condition only.
    pub(super) partial: bool,
}

pub(super) async fn indexes_of_the_schema(db: &PgPool) -> Vec<Index> {
    let rows: Vec<(String, String, bool, bool, bool)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, i.indrelid::regclass::text, i.indisunique,
                EXISTS (SELECT 1 FROM pg_constraint f
                         WHERE f.contype = 'f' AND f.conrelid = i.indrelid
                           AND f.conkey[1] = i.indkey[0]),
                i.indpred IS NOT NULL
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE c.relnamespace = 'public'::regnamespace
          ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(name, table, unique, leads_with_foreign_key, partial)| Index {
            name,
            table,
            unique,
            leads_with_foreign_key,
            partial,
        })
        .collect()
}
