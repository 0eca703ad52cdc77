//! Settings: flags and `TB_*` variables (clap merges those two), then the
//! optional TOML file, then defaults.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use datasets::DataKey;
use gateway::auth::rate_limit::LoginLimits;
use gateway::client_addr::TrustedProxies;
use gateway::runner_link::RunnerTerms;
use gateway::verification::VerificationSettings;
use gateway::verification::fetch::Ports;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;
use store::StoreUrl;

use crate::cli::{GlobalArgs, LogFormat, VerificationArgs};

pub const DEFAULT_STORE: &str = "sqlite://./data/trafficbuster.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Longest a domain verification may be set to count: a year.
const MAX_VALID_DAYS: u32 = 365;

/// What the TOML file may say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub store: Option<String>,
    pub listen: Option<String>,
    pub log_format: Option<LogFormat>,
    /// Signs access tokens; at least 32 characters; the same on every gateway.
    pub jwt_secret: Option<SecretString>,
    /// Seconds an access token lives.
    pub access_token_ttl: Option<u32>,
    /// Seconds after expiry during which a refresh keeps the session.
    pub refresh_grace: Option<u32>,
    /// CIDRs of proxies whose forwarding headers name the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// Login attempts a minute from one client address.
    pub login_limit_per_address: Option<u32>,
    /// Login attempts (and password changes) a minute per account.
    pub login_limit_per_account: Option<u32>,
    /// Seals proxy passwords in datasets: 32 bytes as 64 hex digits or
    /// base64; the same on every gateway.
    pub data_key: Option<SecretString>,
    /// Seconds an upload stays open for its chunks and its finish.
    pub upload_ttl: Option<u32>,
    /// Milliseconds between a runner's heartbeats; three missed and it is offline.
    pub runner_heartbeat_ms: Option<u32>,
    /// Milliseconds a lease lasts without a heartbeat renewing it.
    pub lease_ttl_ms: Option<u32>,
    /// Lets domain verification reach non-public addresses (tests, private networks).
    pub verification_allow_private_addresses: Option<bool>,
    /// The DNS server (`IP:PORT`) domain verification asks.
    pub verification_dns_server: Option<String>,
    /// Days a domain verification counts.
    pub verification_valid_days: Option<u32>,
    /// The well-known file's HTTPS port (tests, non-standard set-ups).
    pub verification_https_port: Option<u16>,
    /// The well-known file's plain HTTP port (tests, non-standard set-ups).
    pub verification_http_port: Option<u16>,
}

impl FileSettings {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            // toml's Display spans several lines (with a caret); keep one.
            let msg = e.message();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    anyhow::anyhow!("config file {} line {line}: {msg}", path.display())
                }
                None => anyhow::anyhow!("config file {}: {msg}", path.display()),
            }
        })
    }
}

/// The resolved settings.
#[derive(Debug)]
pub struct Settings {
    pub store: StoreUrl,
    /// The store was named (flag, `TB_STORE` or the file), not defaulted.
    pub store_named: bool,
    pub log_format: LogFormat,
    file: FileSettings,
}

impl Settings {
    pub fn resolve(global: &GlobalArgs) -> anyhow::Result<Self> {
        let file = match &global.config {
            Some(path) => FileSettings::load(path)?,
            None => FileSettings::default(),
        };
        let named = global.store.clone().or_else(|| file.store.clone());
        let store_named = named.is_some();
        let store_text = named.unwrap_or_else(|| DEFAULT_STORE.to_owned());
        let store = store_text.parse::<StoreUrl>()?;
        let log_format = global
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Pretty);
        Ok(Self {
            store,
            store_named,
            log_format,
            file,
        })
    }

    /// The token signing secret: `TB_JWT_SECRET`, then the file. With the
    /// embedded store and neither set, one is made once and kept beside the
    /// database file (readable by its owner only).
    pub fn jwt_secret(&self, from_env: Option<SecretString>) -> anyhow::Result<SecretSlice<u8>> {
        if let Some(secret) = from_env.as_ref().or(self.file.jwt_secret.as_ref()) {
            let secret = secret.expose_secret();
            if secret.len() < 32 {
                bail!(
                    "the JWT secret (TB_JWT_SECRET or jwt_secret) must be at least 32 characters"
                );
            }
            return Ok(secret.as_bytes().to_vec().into());
        }
        match &self.store {
            StoreUrl::Sqlite(db) => {
                let path = db.with_file_name("jwt-secret");
                let secret = kept_secret(&path, "token signing secret", || {
                    Ok(gateway::auth::tokens::random_secret())
                })?;
                if secret.expose_secret().len() < 32 {
                    bail!(
                        "{} holds a secret shorter than 32 characters; delete it to make a new one",
                        path.display()
                    );
                }
                Ok(secret.expose_secret().as_bytes().to_vec().into())
            }
            StoreUrl::Postgres { .. } => bail!(
                "set TB_JWT_SECRET (at least 32 characters, the same on every gateway) when the store is PostgreSQL"
            ),
        }
    }

    /// The key that seals proxy passwords: `TB_DATA_KEY`, then the file.
    /// With the embedded store and neither set, one is made once and kept
    /// beside the database file; with PostgreSQL there is none, and
    /// proxies with credentials are refused until one is set.
    pub fn data_key(&self, from_env: Option<SecretString>) -> anyhow::Result<Option<DataKey>> {
        let parse = |text: &SecretString, from: &str| {
            DataKey::from_text(text.expose_secret())
                .with_context(|| format!("the data key ({from})"))
        };
        if let Some(text) = &from_env {
            return parse(text, "TB_DATA_KEY").map(Some);
        }
        if let Some(text) = &self.file.data_key {
            return parse(text, "data_key in the config file").map(Some);
        }
        match &self.store {
            StoreUrl::Sqlite(db) => {
                let path = db.with_file_name("data-key");
                // 32 random bytes as 64 hex digits: a data key's own form.
                let text = kept_secret(&path, "data key", || {
                    Ok(gateway::auth::tokens::random_secret())
                })?;
                parse(&text, &path.display().to_string()).map(Some)
            }
            StoreUrl::Postgres { .. } => {
                tracing::warn!(
                    "no data key (TB_DATA_KEY): proxies with credentials cannot be imported"
                );
                Ok(None)
            }
        }
    }

    /// How long an upload stays open: `--upload-ttl`/`TB_UPLOAD_TTL`, then
    /// the file, then a day.
    pub fn upload_ttl(&self, flag: Option<u32>) -> anyhow::Result<time::Duration> {
        match flag.or(self.file.upload_ttl) {
            None => Ok(gateway::startup::DEFAULT_UPLOAD_TTL),
            Some(0) => bail!(
                "the upload lifetime (--upload-ttl / TB_UPLOAD_TTL) must be at least 1 second"
            ),
            Some(seconds) => Ok(time::Duration::seconds(i64::from(seconds))),
        }
    }

    /// The runners' heartbeat and lease times: the flags, then the file,
    /// then 5 s and 30 s. A lease outlasts at least two heartbeats, so one
    /// late heartbeat never costs a runner its flows.
    pub fn runner_terms(
        &self,
        heartbeat_ms: Option<u32>,
        lease_ttl_ms: Option<u32>,
    ) -> anyhow::Result<RunnerTerms> {
        let defaults = RunnerTerms::default();
        let ms = |v: u32| std::time::Duration::from_millis(u64::from(v));
        let heartbeat_every = heartbeat_ms
            .or(self.file.runner_heartbeat_ms)
            .map_or(defaults.heartbeat_every, ms);
        let lease_ttl = lease_ttl_ms
            .or(self.file.lease_ttl_ms)
            .map_or(defaults.lease_ttl, ms);
        if heartbeat_every < std::time::Duration::from_millis(100) {
            bail!(
                "the runner heartbeat (--runner-heartbeat-ms / TB_RUNNER_HEARTBEAT_MS) must be at least 100 ms"
            );
        }
        if lease_ttl < heartbeat_every * 2 {
            bail!(
                "the lease time (--lease-ttl-ms / TB_LEASE_TTL_MS) must be at least two heartbeats ({} ms)",
                (heartbeat_every * 2).as_millis()
            );
        }
        Ok(RunnerTerms {
            heartbeat_every,
            lease_ttl,
        })
    }

    /// Proxies trusted to name the client: `--trusted-proxy`/`TB_TRUSTED_PROXIES`,
    /// then the file, then none.
    pub fn trusted_proxies(&self, flags: &[String]) -> anyhow::Result<TrustedProxies> {
        let cidrs = match (flags, &self.file.trusted_proxies) {
            ([], Some(file)) => file.as_slice(),
            _ => flags,
        };
        Ok(TrustedProxies::parse(cidrs)?)
    }

    /// Login limits a minute: flags/`TB_*`, then the file, then the defaults.
    pub fn login_limits(
        &self,
        per_address: Option<u32>,
        per_account: Option<u32>,
    ) -> anyhow::Result<LoginLimits> {
        let defaults = LoginLimits::default();
        let limits = LoginLimits {
            per_address: per_address
                .or(self.file.login_limit_per_address)
                .unwrap_or(defaults.per_address),
            per_account: per_account
                .or(self.file.login_limit_per_account)
                .unwrap_or(defaults.per_account),
        };
        if limits.per_address == 0 || limits.per_account == 0 {
            bail!(
                "login limits (--login-limit-per-address, --login-limit-per-account) must be at least 1 a minute"
            );
        }
        Ok(limits)
    }

    /// Token lifetimes: flags/`TB_*`, then the file, then the defaults.
    pub fn session_policy(
        &self,
        access_ttl: Option<u32>,
        grace: Option<u32>,
    ) -> anyhow::Result<gateway::auth::sessions::SessionPolicy> {
        let defaults = gateway::auth::sessions::SessionPolicy::default();
        let seconds = |v: Option<u32>, file: Option<u32>, default: time::Duration| {
            v.or(file)
                .map_or(default, |s| time::Duration::seconds(i64::from(s)))
        };
        let policy = gateway::auth::sessions::SessionPolicy {
            access_ttl: seconds(access_ttl, self.file.access_token_ttl, defaults.access_ttl),
            grace: seconds(grace, self.file.refresh_grace, defaults.grace),
        };
        if policy.access_ttl <= time::Duration::ZERO {
            bail!(
                "the access token lifetime (--access-token-ttl / TB_ACCESS_TOKEN_TTL) must be at least 1 second"
            );
        }
        Ok(policy)
    }

    /// Domain verification: flags/`TB_*`, then the file, then the defaults.
    pub fn verification(&self, args: &VerificationArgs) -> anyhow::Result<VerificationSettings> {
        let file = &self.file;
        let defaults = VerificationSettings::default();
        let dns_server = match args
            .verification_dns_server
            .as_deref()
            .or(file.verification_dns_server.as_deref())
        {
            None => None,
            Some(text) => match text.trim().parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => Some(addr),
                _ => bail!(
                    "verification_dns_server (--verification-dns-server / TB_VERIFICATION_DNS_SERVER) \
                     {text:?} is not IP:PORT with a port above 0 (e.g. 127.0.0.1:53 or [::1]:53)"
                ),
            },
        };
        let days = args
            .verification_valid_days
            .or(file.verification_valid_days);
        let valid_for = match days {
            None => defaults.valid_for,
            Some(d @ 1..=MAX_VALID_DAYS) => time::Duration::days(i64::from(d)),
            Some(d) => bail!(
                "verification_valid_days (--verification-valid-days / TB_VERIFICATION_VALID_DAYS) \
                 is {d}; give 1 to {MAX_VALID_DAYS} days"
            ),
        };
        let port = |flag: Option<u16>, file: Option<u16>, default: u16, name: &str| match flag
            .or(file)
        {
            None => Ok(default),
            Some(0) => bail!(
                "verification_{name}_port (--verification-{name}-port / TB_VERIFICATION_{}_PORT) \
                     must be 1 to 65535",
                name.to_ascii_uppercase()
            ),
            Some(p) => Ok(p),
        };
        Ok(VerificationSettings {
            allow_private_addresses: args
                .verification_allow_private_addresses
                .or(file.verification_allow_private_addresses)
                .unwrap_or(defaults.allow_private_addresses),
            dns_server,
            valid_for,
            ports: Ports {
                https: port(
                    args.verification_https_port,
                    file.verification_https_port,
                    defaults.ports.https,
                    "https",
                )?,
                http: port(
                    args.verification_http_port,
                    file.verification_http_port,
                    defaults.ports.http,
                    "http",
                )?,
            },
        })
    }

    /// The listen address: `--listen`/`TB_LISTEN`, then the file, then the default.
    pub fn listen(&self, flag: Option<&str>) -> anyhow::Result<SocketAddr> {
        let text = flag
            .or(self.file.listen.as_deref())
            .unwrap_or(DEFAULT_LISTEN);
        match text.parse() {
            Ok(addr) => Ok(addr),
            Err(_) => {
                bail!("listen address {text:?} is not IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)")
            }
        }
    }

    /// Where `serve`'s in-process runner keeps its state: `flag`, else a
    /// `runner` directory beside the SQLite database, else (PostgreSQL) the
    /// user's, as for `trafficbuster runner`.
    pub fn runner_state_dir(&self, flag: Option<&Path>) -> anyhow::Result<std::path::PathBuf> {
        if let Some(dir) = flag {
            return Ok(dir.to_owned());
        }
        match &self.store {
            StoreUrl::Sqlite(db) => Ok(db.with_file_name("runner")),
            StoreUrl::Postgres { .. } => crate::commands::runner::user_state_dir(),
        }
    }
}

/// Reads the secret kept at `path`, creating it first with `make` (mode
/// 0600) when there is none: the one way a gateway on the embedded store
/// keeps a secret it made.
fn kept_secret(
    path: &Path,
    what: &str,
    make: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<SecretString> {
    use std::io::Write;
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let secret = make()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the {what} {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    tracing::info!(path = %path.display(), "created a {what}");
    Ok(SecretString::from(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(store: Option<&str>, config: Option<&Path>) -> GlobalArgs {
        GlobalArgs {
            store: store.map(Into::into),
            config: config.map(Into::into),
            log_format: None,
        }
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tb.toml");
        std::fs::write(&path, "store = \"sqlite:///from/file.db\"\nlisten = \"127.0.0.1:9999\"\nlog_format = \"json\"\n").unwrap();

        let from_file = Settings::resolve(&global(None, Some(&path))).unwrap();
        assert_eq!(from_file.store.to_string(), "sqlite:///from/file.db");
        assert_eq!(from_file.listen(None).unwrap().port(), 9999);
        assert_eq!(from_file.log_format, LogFormat::Json);

        let flagged = Settings::resolve(&global(Some("sqlite:///flag.db"), Some(&path))).unwrap();
        assert_eq!(flagged.store.to_string(), "sqlite:///flag.db");
        assert_eq!(flagged.listen(Some("127.0.0.1:1")).unwrap().port(), 1);

        let defaults = Settings::resolve(&global(None, None)).unwrap();
        assert_eq!(defaults.store.to_string(), DEFAULT_STORE);
        assert_eq!(defaults.listen(None).unwrap().to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn a_bad_config_file_names_the_line_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tb.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nstroe = \"x\"\n").unwrap();
        let err = Settings::resolve(&global(None, Some(&path)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("stroe"), "{err}");
    }

    #[test]
    fn a_bad_listen_address_says_the_expected_form() {
        let s = Settings::resolve(&global(None, None)).unwrap();
        let err = s.listen(Some("localhost")).unwrap_err().to_string();
        assert!(err.contains("IP:PORT"), "{err}");
    }

    #[test]
    fn debug_output_of_the_settings_never_shows_the_jwt_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tb.toml");
        let secret = "a-file-secret-that-must-not-be-printed";
        std::fs::write(&path, format!("jwt_secret = \"{secret}\"\n")).unwrap();
        let settings = Settings::resolve(&global(None, Some(&path))).unwrap();
        let printed = format!("{settings:?}");
        assert!(printed.contains("jwt_secret"), "{printed}");
        assert!(!printed.contains(secret), "{printed}");
        let key = settings.jwt_secret(None).unwrap();
        assert_eq!(key.expose_secret(), secret.as_bytes());
        assert!(!format!("{key:?}").contains(secret));
    }

    #[test]
    fn the_data_key_comes_from_the_environment_then_the_file_and_is_named_when_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tb.toml");
        let hex_key = "ab".repeat(32);
        std::fs::write(
            &path,
            format!("data_key = \"{hex_key}\"\nupload_ttl = 60\n"),
        )
        .unwrap();
        let s = Settings::resolve(&global(Some("postgres://u@h/db"), Some(&path))).unwrap();
        assert!(s.data_key(None).unwrap().is_some());
        assert!(!format!("{s:?}").contains(&hex_key));
        let base64_key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        assert!(s.data_key(Some(base64_key.into())).unwrap().is_some());
        let err = s.data_key(Some("too short".into())).unwrap_err();
        assert!(format!("{err:#}").contains("TB_DATA_KEY"), "{err:#}");
        assert!(format!("{err:#}").contains("32 bytes"), "{err:#}");
        assert_eq!(s.upload_ttl(None).unwrap(), time::Duration::seconds(60));
        assert_eq!(s.upload_ttl(Some(5)).unwrap(), time::Duration::seconds(5));
        assert!(s.upload_ttl(Some(0)).is_err());
        let terms = s.runner_terms(Some(200), Some(1000)).unwrap();
        assert_eq!(terms.heartbeat_every, std::time::Duration::from_millis(200));
        assert_eq!(terms.lease_ttl, std::time::Duration::from_secs(1));
        assert_eq!(s.runner_terms(None, None).unwrap(), RunnerTerms::default());
        assert!(s.runner_terms(Some(50), None).is_err());
        let err = s
            .runner_terms(Some(1000), Some(1500))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least two heartbeats (2000 ms)"), "{err}");
    }

    #[test]
    fn without_a_data_key_sqlite_makes_one_beside_the_database_and_postgres_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let url = format!("sqlite://{}", db.display());
        let s = Settings::resolve(&global(Some(&url), None)).unwrap();
        assert!(s.data_key(None).unwrap().is_some());
        let kept = dir.path().join("data-key");
        let first = std::fs::read_to_string(&kept).unwrap();
        assert_eq!(first.len(), 64, "32 bytes as hex");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(s.data_key(None).unwrap().is_some());
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), first, "made once");
        let pg = Settings::resolve(&global(Some("postgres://u@h/db"), None)).unwrap();
        assert!(pg.data_key(None).unwrap().is_none());
        assert_eq!(pg.upload_ttl(None).unwrap(), time::Duration::DAY);
    }

    #[test]
    fn trusted_proxies_and_login_limits_come_from_flags_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tb.toml");
        std::fs::write(
            &path,
            "trusted_proxies = [\"10.0.0.0/8\"]\nlogin_limit_per_account = 3\n",
        )
        .unwrap();
        let s = Settings::resolve(&global(None, Some(&path))).unwrap();
        assert_eq!(
            s.trusted_proxies(&[]).unwrap(),
            TrustedProxies::parse(["10.0.0.0/8"]).unwrap()
        );
        assert_eq!(
            s.trusted_proxies(&["127.0.0.1/32".into()]).unwrap(),
            TrustedProxies::parse(["127.0.0.1/32"]).unwrap()
        );
        let limits = s.login_limits(Some(50), None).unwrap();
        assert_eq!((limits.per_address, limits.per_account), (50, 3));
        let defaults = Settings::resolve(&global(None, None)).unwrap();
        assert_eq!(
            defaults.login_limits(None, None).unwrap(),
            LoginLimits::default()
        );
        assert_eq!(
            defaults.trusted_proxies(&[]).unwrap(),
            TrustedProxies::default()
        );
    }

    #[test]
    fn verification_settings_come_from_flags_then_the_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tb.toml");
        std::fs::write(
            &path,
            "verification_dns_server = \"127.0.0.1:5353\"\nverification_valid_days = 7\n\
             verification_allow_private_addresses = true\nverification_http_port = 8080\n",
        )
        .unwrap();
        let s = Settings::resolve(&global(None, Some(&path))).unwrap();
        let flags = VerificationArgs {
            verification_allow_private_addresses: Some(false),
            verification_https_port: Some(8443),
            ..VerificationArgs::default()
        };
        let v = s.verification(&flags).unwrap();
        assert_eq!(v.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(v.valid_for, time::Duration::days(7));
        assert!(!v.allow_private_addresses);
        assert_eq!(
            v.ports,
            Ports {
                https: 8443,
                http: 8080
            }
        );
        let defaults = Settings::resolve(&global(None, None)).unwrap();
        assert_eq!(
            defaults.verification(&VerificationArgs::default()).unwrap(),
            VerificationSettings::default()
        );
        assert!(!VerificationSettings::default().allow_private_addresses);
    }

    #[test]
    fn a_bad_verification_setting_is_named() {
        let s = Settings::resolve(&global(None, None)).unwrap();
        let cases = [
            (
                VerificationArgs {
                    verification_dns_server: Some("localhost:53".into()),
                    ..VerificationArgs::default()
                },
                "verification_dns_server",
            ),
            (
                VerificationArgs {
                    verification_dns_server: Some("127.0.0.1".into()),
                    ..VerificationArgs::default()
                },
                "IP:PORT",
            ),
            (
                VerificationArgs {
                    verification_valid_days: Some(0),
                    ..VerificationArgs::default()
                },
                "verification_valid_days",
            ),
            (
                VerificationArgs {
                    verification_valid_days: Some(366),
                    ..VerificationArgs::default()
                },
                "1 to 365 days",
            ),
            (
                VerificationArgs {
                    verification_http_port: Some(0),
                    ..VerificationArgs::default()
                },
                "--verification-http-port",
            ),
        ];
        for (args, named) in cases {
            let err = s.verification(&args).unwrap_err().to_string();
            assert!(err.contains(named), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_bad_trusted_proxy_or_a_zero_limit_is_named() {
        let s = Settings::resolve(&global(None, None)).unwrap();
        let err = s
            .trusted_proxies(&["10.0.0.0/8".into(), "10.0.0.300/8".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"10.0.0.300/8\""), "{err}");
        let err = s.login_limits(Some(0), None).unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{err}");
    }
}
