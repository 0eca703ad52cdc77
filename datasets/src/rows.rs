//! A version's rows: one list of one kind.

use domain::{DatasetKind, RowsSummary};

use crate::device_profile::DeviceProfile;
use crate::proxy::Proxy;
use crate::secret::{DataKey, SealError};
use crate::settings_profile::SettingsProfile;
use crate::target::Target;

#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    Targets(Vec<Target>),
    Proxies(Vec<Proxy>),
    DeviceProfiles(Vec<DeviceProfile>),
    SettingsProfiles(Vec<SettingsProfile>),
}

impl Rows {
    pub fn kind(&self) -> DatasetKind {
        match self {
            Rows::Targets(_) => DatasetKind::Targets,
            Rows::Proxies(_) => DatasetKind::Proxies,
            Rows::DeviceProfiles(_) => DatasetKind::DeviceProfiles,
            Rows::SettingsProfiles(_) => DatasetKind::SettingsProfiles,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Rows::Targets(rows) => rows.len(),
            Rows::Proxies(rows) => rows.len(),
            Rows::DeviceProfiles(rows) => rows.len(),
            Rows::SettingsProfiles(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What these rows ask of a licence.
    pub fn summary(&self) -> RowsSummary {
        let mut summary = RowsSummary {
            rows: self.len() as u64,
            ..RowsSummary::default()
        };
        if let Rows::SettingsProfiles(profiles) = self {
            for p in profiles {
                summary.max_instances = summary.max_instances.max(p.instances);
                summary.human_surfing |= p.human_surfing();
                summary.external_clicks |= p.external_clicks();
            }
        }
        summary
    }

    /// Seals every proxy password in clear with `key`; [`crate::encode`]
    /// refuses rows that still hold one.
    pub fn seal_credentials(&mut self, key: &DataKey) -> Result<(), SealError> {
        if let Rows::Proxies(proxies) = self {
            for password in proxies.iter_mut().filter_map(|p| p.password.as_mut()) {
                password.seal(key)?;
            }
        }
        Ok(())
    }

    /// The first row whose password is still in clear.
    pub(crate) fn unsealed(&self) -> Option<usize> {
        match self {
            Rows::Proxies(proxies) => proxies
                .iter()
                .position(|p| p.password.as_ref().is_some_and(|pw| !pw.is_sealed())),
            _ => None,
        }
    }
}
