//! The built-in device profiles: each passes the same validation as an
//! upload, and the set covers what the product promises.

use std::collections::HashSet;

use datasets::{Browser, ImportOptions, Os, Rows, catalogue, decode, encode, parse};
use domain::{DatasetKind, ImportFormat};

#[test]
fn the_catalogue_reads_and_survives_json_and_the_blob() {
    let profiles = catalogue::device_profiles();
    let json = serde_json::to_vec(&profiles).unwrap();
    let rows = parse(
        DatasetKind::DeviceProfiles,
        ImportFormat::Json,
        &json,
        &ImportOptions::default(),
    );
    assert_eq!(rows, Ok(Rows::DeviceProfiles(profiles.clone())));
    let rows = Rows::DeviceProfiles(profiles);
    assert_eq!(decode(&encode(&rows).unwrap()).unwrap(), rows);
}

#[test]
fn the_catalogue_covers_desktops_phones_and_a_tablet() {
    let profiles = catalogue::device_profiles();
    assert_eq!(catalogue::VERSION, 1);
    for os in [Os::Windows, Os::Macos, Os::Linux] {
        assert!(
            profiles
                .iter()
                .any(|p| p.os == os && p.browser == Browser::Chrome && !p.touch),
            "{os:?}"
        );
    }
    let phone = |p: &&datasets::DeviceProfile| p.touch && p.viewport.width < 500;
    assert!(profiles.iter().filter(phone).any(|p| p.os == Os::Android));
    assert!(profiles.iter().filter(phone).any(|p| p.os == Os::Ios));
    assert!(
        profiles
            .iter()
            .any(|p| p.touch && (700..1400).contains(&p.viewport.width)),
        "a tablet"
    );
    let names: HashSet<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), profiles.len(), "names are unique");
}
