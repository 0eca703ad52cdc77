//! The vocabulary every dataset shares: what a dataset holds, what format an
//! upload arrives in, and what a version's rows ask of a licence.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a dataset holds. Each kind is versioned and owned by an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum DatasetKind {
    /// URLs to visit, with traffic type, source, keyword and targets.
    Targets,
    /// Proxies a flow goes through.
    Proxies,
    /// Device profiles ("platforms") a browser emulates.
    DeviceProfiles,
    /// How a session behaves: duration, pages, human surfing, instances…
    SettingsProfiles,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::Targets,
        DatasetKind::Proxies,
        DatasetKind::DeviceProfiles,
        DatasetKind::SettingsProfiles,
    ];

    /// The name clients and the CLI see.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Targets => "targets",
            DatasetKind::Proxies => "proxies",
            DatasetKind::DeviceProfiles => "deviceProfiles",
            DatasetKind::SettingsProfiles => "settingsProfiles",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a dataset kind (targets, proxies, deviceProfiles, settingsProfiles)")]
pub struct DatasetKindError(String);

impl FromStr for DatasetKind {
    type Err = DatasetKindError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| DatasetKindError(s.to_owned()))
    }
}

/// The format an upload arrives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum ImportFormat {
    /// One URL or proxy per line; `#` starts a comment.
    Txt,
    /// A header row, any column order, quoted fields.
    Csv,
    /// The first sheet (or a named one), with a header row.
    Xlsx,
    /// Targets from a Word document's lines and hyperlinks.
    Docx,
    /// An array of objects.
    Json,
}

/// What a version's rows ask of the licence, so the dataset decider can
/// check it without seeing the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RowsSummary {
    /// Rows in the version.
    pub rows: u64,
    /// The most concurrent browsers any settings profile asks for.
    pub max_instances: u32,
    /// Some settings profile turns human surfing (scrolling or clicks) on.
    pub human_surfing: bool,
    /// Some settings profile sends clicks to external links.
    pub external_clicks: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_back_from_their_names() {
        for kind in DatasetKind::ALL {
            assert_eq!(kind.as_str().parse::<DatasetKind>(), Ok(kind));
        }
        assert_eq!("TARGETS".parse::<DatasetKind>(), Ok(DatasetKind::Targets));
        assert!("images".parse::<DatasetKind>().is_err());
    }
}
