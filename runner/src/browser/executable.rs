//! Which Chromium to run: `--chrome PATH`, else `CHROME`, else the usual
//! install paths. A path given explicitly is used or refused, never
//! silently replaced by another.

use std::path::{Path, PathBuf};

use super::error::LaunchError;

/// Where distributions and vendors put Chromium or Chrome, first match wins.
const USUAL_PATHS: &[&str] = &[
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/lib/chromium/chromium",
    "/usr/bin/google-chrome-stable",
    "/usr/bin/google-chrome",
    "/snap/bin/chromium",
    "/opt/google/chrome/chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
];

/// The browser to launch: `explicit` (the `--chrome` option), else the
/// `CHROME` environment variable, else the first usual install path found.
pub fn find_chrome(explicit: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let env = std::env::var_os("CHROME").filter(|v| !v.is_empty());
    let usual: Vec<PathBuf> = USUAL_PATHS.iter().map(PathBuf::from).collect();
    find_in(explicit, env.as_deref().map(Path::new), &usual)
}

fn find_in(
    explicit: Option<&Path>,
    env: Option<&Path>,
    usual: &[PathBuf],
) -> Result<PathBuf, LaunchError> {
    let chosen = explicit
        .map(|p| (p, "--chrome"))
        .or(env.map(|p| (p, "CHROME")));
    if let Some((path, from)) = chosen {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(LaunchError::NotFound {
                searched: format!(
                    "{from} names {}, which is not an executable file",
                    path.display()
                ),
            })
        };
    }
    usual
        .iter()
        .find(|p| is_executable(p))
        .cloned()
        .ok_or_else(|| LaunchError::NotFound {
            searched: format!(
                "none of {}",
                usual
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_exe(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn the_chrome_option_wins_over_the_environment_and_usual_paths() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_exe(dir.path(), "a");
        let b = fake_exe(dir.path(), "b");
        let c = fake_exe(dir.path(), "c");
        assert_eq!(
            find_in(Some(&a), Some(&b), std::slice::from_ref(&c)).unwrap(),
            a
        );
        assert_eq!(
            find_in(None, Some(&b), std::slice::from_ref(&c)).unwrap(),
            b
        );
        assert_eq!(
            find_in(None, None, &[dir.path().join("missing"), c.clone()]).unwrap(),
            c
        );
    }

    #[test]
    fn a_named_browser_that_is_missing_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let usual = fake_exe(dir.path(), "usual");
        let err = find_in(Some(&dir.path().join("nope")), None, &[usual]).unwrap_err();
        let line = err.to_string();
        assert!(line.contains("--chrome names"), "{line}");
        assert!(line.contains("apt-get install chromium"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn no_browser_anywhere_is_one_line_saying_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_in(None, None, &[dir.path().join("chromium")]).unwrap_err();
        let line = err.to_string();
        assert!(line.contains("apt-get install chromium"), "{line}");
        assert!(!line.contains('\n'));
    }
}
