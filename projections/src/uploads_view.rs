//! The `uploads` view: each upload's owner, status and expiry, so the
//! gateway's sweep finds the open ones past their time.

use domain::RecordedEvent;
use domain::upload::UploadEvent;
use store::Filter;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct UploadsView;

pub const TABLE: &str = "view_uploads";

const PREFIX: &str = "upload-";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_uploads (
    upload_id   TEXT NOT NULL PRIMARY KEY,
    owner       TEXT NOT NULL,
    status      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
)",
    "CREATE INDEX view_uploads_status ON view_uploads (status, expires_at)",
];

impl Projection for UploadsView {
    fn name(&self) -> &'static str {
        "uploads"
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn filter(&self) -> Filter {
        Filter::stream_prefix(PREFIX)
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let Some(id) = event.stream_id.as_str().strip_prefix(PREFIX) else {
            return Ok(());
        };
        let status = match registry().decode::<UploadEvent>(event)? {
            UploadEvent::UploadStarted(s) => {
                out.push(
                    Statement::new(
                        "INSERT INTO view_uploads (upload_id, owner, status, expires_at, updated_at) \
                         VALUES ($1, $2, 'open', $3, $4)",
                    )
                    .bind(id)
                    .bind(s.owner.as_str())
                    .bind(s.expires_at)
                    .bind(event.recorded_at),
                );
                return Ok(());
            }
            UploadEvent::UploadFinished(_) => "finished",
            UploadEvent::UploadFailed(_) => "failed",
            UploadEvent::UploadExpired(_) => "expired",
        };
        out.push(
            Statement::new(
                "UPDATE view_uploads SET status = $2, updated_at = $3 WHERE upload_id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(event.recorded_at),
        );
        Ok(())
    }
}
