//! `vault rekey`: re-encrypting every entry under the newest key.

use std::ops::ControlFlow;

use super::{
    ACCESS, ID_TOKEN, PENDING_ID_TOKEN, REFRESH, Result, Vault, VaultError, VaultKeyRing, aad,
};
use crate::store::{Resealed, VaultRow};

/// What `vault rekey` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Entries looked at.
    pub scanned: u64,
    /// Entries re-encrypted under the newest key.
    pub moved: u64,
    /// Entries that were already under the newest key.
    pub current: u64,
    /// Entries that changed while being re-encrypted (their writer sealed them
    /// under its own key); a second run picks up any that still need it.
    pub changed_meanwhile: u64,
    /// Entries that could not be opened: `(app, user_id, reason)`.
    pub failed: Vec<(String, String, String)>,
}

impl Vault {
    /// Re-encrypts every entry that is not under the newest key, `batch_size`
    /// rows per transaction. `after_batch` sees the running report after each
    /// batch and may stop the run (`ControlFlow::Break`); every finished batch is
    /// committed, so an interrupted run loses nothing and the next run continues.
    pub async fn rekey(
        &self,
        batch_size: u32,
        now: i64,
        mut after_batch: impl FnMut(&RekeyReport) -> ControlFlow<()>,
    ) -> Result<RekeyReport> {
        let current = self.keys.current_key_id().as_str();
        let mut report = RekeyReport::default();
        let mut cursor: Option<(String, String)> = None;
        loop {
            let rows = self
                .store
                .vault_entries_after(
                    cursor.as_ref().map(|(a, u)| (a.as_str(), u.as_str())),
                    batch_size.max(1),
                )
                .await?;
            let Some(last) = rows.last() else { break };
            cursor = Some((last.app.clone(), last.user_id.clone()));
            let mut resealed = Vec::new();
            for row in &rows {
                report.scanned += 1;
                let columns = std::iter::once(row.access_token.as_slice())
                    .chain(row.refresh_token.as_deref())
                    .chain(row.pending_id_token.as_deref())
                    .chain(row.id_token.as_deref());
                let all_current = columns
                    .map(VaultKeyRing::sealed_key_id)
                    .all(|id| id.is_ok_and(|id| id == current));
                if all_current {
                    report.current += 1;
                    continue;
                }
                match self.reseal_row(row) {
                    Ok(r) => resealed.push(r),
                    Err(e) => {
                        report
                            .failed
                            .push((row.app.clone(), row.user_id.clone(), e.to_string()))
                    }
                }
            }
            let written = self.store.write_resealed(&resealed, now).await?;
            report.moved += written;
            report.changed_meanwhile += resealed.len() as u64 - written;
            if after_batch(&report).is_break() {
                break;
            }
        }
        Ok(report)
    }

    fn reseal_row(&self, row: &VaultRow) -> Result<Resealed> {
        let ids = [row.app.as_str(), row.user_id.as_str()];
        let reseal = |column: &'static str, sealed: &[u8]| {
            self.keys
                .reseal(&aad(&ids, column), sealed)
                .map_err(|source| VaultError::Crypto {
                    app: row.app.clone(),
                    user_id: row.user_id.clone(),
                    column,
                    source,
                })
        };
        Ok(Resealed {
            app: row.app.clone(),
            user_id: row.user_id.clone(),
            row_version: row.row_version,
            access_token: reseal(ACCESS, &row.access_token)?,
            refresh_token: row
                .refresh_token
                .as_deref()
                .map(|s| reseal(REFRESH, s))
                .transpose()?,
            pending_id_token: row
                .pending_id_token
                .as_deref()
                .map(|s| reseal(PENDING_ID_TOKEN, s))
                .transpose()?,
            id_token: row
                .id_token
                .as_deref()
                .map(|s| reseal(ID_TOKEN, s))
                .transpose()?,
        })
    }
}
