//! The built-in device profiles a user can publish as a dataset in one step:
//! desktop Chrome on Windows, macOS and Linux; common Android and
//! iPhone-sized phones; tablets. They live in `catalogue.csv` and are read
//! by the importer itself, so they pass exactly the checks an upload does.
//! Raise [`VERSION`] whenever the list changes, so a dataset published from
//! an older catalogue can say that an update is available.

use domain::{DatasetKind, ImportFormat};

use crate::device_profile::DeviceProfile;
use crate::{ImportOptions, Rows, parse};

/// The catalogue's version.
pub const VERSION: u32 = 1;

const PROFILES: &str = include_str!("catalogue.csv");

/// The catalogue's profiles, in the file's order.
pub fn device_profiles() -> Vec<DeviceProfile> {
    let opts = ImportOptions::default();
    match parse(
        DatasetKind::DeviceProfiles,
        ImportFormat::Csv,
        PROFILES.as_bytes(),
        &opts,
    ) {
        Ok(Rows::DeviceProfiles(profiles)) => profiles,
        // A fixed file, read by every test run: it cannot fail at run time.
        other => unreachable!("the built-in catalogue does not read: {other:?}"),
    }
}
