//! Plain data that sources produce and the repository stores: what a database dump says about
//! its tables and roles. Imports nothing of backstop, so every layer may use it.

use serde::{Deserialize, Serialize};

/// The checksum method of a table's COPY lines (see `source::copytext`).
pub const METHOD_COPY: &str = "copy-xxh3-128";
/// The checksum method computed by SQL over `row::text`.
pub const METHOD_ROW: &str = "row-hashtextextended";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStat {
    pub schema: String,
    pub name: String,
    /// `r` table, `m` materialized view.
    pub kind: String,
    pub rows: u64,
    /// Order-independent checksum of the rows, computed as `method` says.
    pub checksum: String,
    /// `copy-xxh3-128`: the wrapping sum of the XXH3-128 of each row's line in the dump's COPY
    /// data, which `copy` reproduces; `row-hashtextextended`: the sum of
    /// `hashtextextended(row::text, 0)` computed by SQL (materialized views, or any table when
    /// the dump could not be read as it streamed). See `source::copytext`.
    #[serde(default = "row_method")]
    pub method: String,
    /// For `copy-xxh3-128`: the `COPY ... TO STDOUT` statement that writes the same lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<String>,
}

fn row_method() -> String {
    METHOD_ROW.to_string()
}

impl TableStat {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub can_login: bool,
    pub bypass_rls: bool,
    pub superuser: bool,
}
