//! Settings: `Leptos.toml` holds the defaults, environment variables override them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use leptos::config::LeptosOptions;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read settings file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// The `[tether]` table of `Leptos.toml`; strings so that "empty" can mean "derive it".
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct TetherTable {
    data_dir: String,
    database_url: String,
    token_ttl_secs: u64,
    public_origin: String,
    allowed_origins: String,
    admin_emails: String,
    allow_guests: bool,
    cookie_secure: String,
}

#[derive(Debug, Deserialize)]
struct SettingsFile {
    tether: TetherTable,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub leptos: LeptosOptions,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// `None`: generated once and kept in the data directory.
    pub jwt_secret: Option<String>,
    pub token_ttl: Duration,
    pub public_origin: String,
    /// Every allowed origin, normalized; matched exactly.
    pub allowed_origins: Vec<String>,
    /// Lower-cased.
    pub admin_emails: Vec<String>,
    pub allow_guests: bool,
    pub cookie_secure: bool,
}

impl Settings {
    /// Reads the settings file named by `TETHER_CONFIG` (default `Leptos.toml`)
    /// and applies the process environment over it.
    pub fn from_env() -> Result<Settings, ConfigError> {
        let path = std::env::var("TETHER_CONFIG").unwrap_or_else(|_| "Leptos.toml".into());
        let leptos = leptos::config::get_configuration(Some(&path))
            .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?
            .leptos_options;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?;
        Settings::resolve(leptos, &text, |name| std::env::var(name).ok())
    }

    /// Combines site options, the settings file's text and a variable lookup.
    pub fn resolve(
        leptos: LeptosOptions,
        file_text: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let file: SettingsFile = toml::from_str(file_text)
            .map_err(|e| ConfigError::File { path: "[tether]".into(), reason: e.to_string() })?;
        let table = file.tether;
        let get = |name: &str, default: String| var(name).unwrap_or(default);

        let data_dir = PathBuf::from(get("TETHER_DATA_DIR", table.data_dir));
        let database_url = match get("DATABASE_URL", table.database_url) {
            url if url.trim().is_empty() => format!("sqlite://{}", data_dir.join("tether.db").display()),
            url => url,
        };
        let token_ttl_secs = match var("TETHER_TOKEN_TTL_SECS") {
            Some(v) => v.trim().parse::<u64>().map_err(|e| invalid("TETHER_TOKEN_TTL_SECS", e))?,
            None => table.token_ttl_secs,
        };
        if token_ttl_secs == 0 {
            return Err(invalid("TETHER_TOKEN_TTL_SECS", "must be at least 1"));
        }
        let jwt_secret = var("TETHER_JWT_SECRET").filter(|s| !s.is_empty());
        if let Some(secret) = &jwt_secret {
            if secret.len() < 32 {
                return Err(invalid("TETHER_JWT_SECRET", "must be at least 32 bytes"));
            }
        }

        let public_origin = match get("TETHER_PUBLIC_ORIGIN", table.public_origin) {
            o if o.trim().is_empty() => format!("http://{}", leptos.site_addr),
            o => normalize_origin(&o).ok_or_else(|| invalid("TETHER_PUBLIC_ORIGIN", "not an origin"))?,
        };
        let mut allowed_origins = vec![public_origin.clone()];
        if let Some(localhost) = localhost_twin(&public_origin, leptos.site_addr) {
            allowed_origins.push(localhost);
        }
        for entry in split_list(&get("TETHER_ALLOWED_ORIGINS", table.allowed_origins)) {
            let origin = normalize_origin(&entry)
                .ok_or_else(|| invalid("TETHER_ALLOWED_ORIGINS", format!("{entry:?} is not an origin")))?;
            allowed_origins.push(origin);
        }
        allowed_origins.dedup();

        let admin_emails = split_list(&get("TETHER_ADMIN_EMAILS", table.admin_emails))
            .into_iter()
            .map(|e| e.to_lowercase())
            .collect();
        let allow_guests = match var("TETHER_ALLOW_GUESTS") {
            Some(v) => parse_bool("TETHER_ALLOW_GUESTS", &v)?,
            None => table.allow_guests,
        };
        let cookie_secure = match get("TETHER_COOKIE_SECURE", table.cookie_secure) {
            v if v.trim().is_empty() => public_origin.starts_with("https://"),
            v => parse_bool("TETHER_COOKIE_SECURE", &v)?,
        };

        Ok(Settings {
            leptos,
            data_dir,
            database_url,
            jwt_secret,
            token_ttl: Duration::from_secs(token_ttl_secs),
            public_origin,
            allowed_origins,
            admin_emails,
            allow_guests,
            cookie_secure,
        })
    }

    pub fn site_addr(&self) -> SocketAddr {
        self.leptos.site_addr
    }

    pub fn is_admin_email(&self, email: &str) -> bool {
        let email = email.to_lowercase();
        self.admin_emails.iter().any(|a| *a == email)
    }

    pub fn is_allowed_origin(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|allowed| allowed == origin)
    }
}

fn invalid(name: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid { name, reason: reason.to_string() }
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, format!("{value:?} is not true or false"))),
    }
}

fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// `scheme://host[:port]` in lower case without a trailing slash, or `None`
/// when the text is not an http(s) origin (a path, userinfo or wildcard).
pub fn normalize_origin(value: &str) -> Option<String> {
    let value = value.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = value.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return None;
    }
    if rest.contains(['/', '@', '*', '?', '#', ' ']) {
        return None;
    }
    Some(value)
}

/// For a loopback site address, browsers may also use `localhost`.
fn localhost_twin(public_origin: &str, site_addr: SocketAddr) -> Option<String> {
    let default_origin = format!("http://{site_addr}");
    (public_origin == default_origin && site_addr.ip().is_loopback())
        .then(|| format!("http://localhost:{}", site_addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = include_str!("../../Leptos.toml");

    fn site(addr: &str) -> LeptosOptions {
        LeptosOptions::builder().output_name("tether").site_addr(addr.parse::<SocketAddr>().unwrap()).build()
    }

    fn resolve(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::resolve(site("127.0.0.1:3000"), FILE, |name| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_from_the_settings_file() {
        let s = resolve(&[]).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("data"));
        assert_eq!(s.database_url, "sqlite://data/tether.db");
        assert_eq!(s.token_ttl, Duration::from_secs(604800));
        assert_eq!(s.allowed_origins, ["http://127.0.0.1:3000", "http://localhost:3000"]);
        assert!(s.allow_guests);
        assert!(!s.cookie_secure);
        assert!(s.jwt_secret.is_none());
    }

    #[test]
    fn variables_override_the_file() {
        let s = resolve(&[
            ("TETHER_DATA_DIR", "/tmp/x"),
            ("TETHER_TOKEN_TTL_SECS", "60"),
            ("TETHER_PUBLIC_ORIGIN", "https://Chat.Example.com/"),
            ("TETHER_ALLOWED_ORIGINS", "http://a.test:8080, https://b.test"),
            ("TETHER_ADMIN_EMAILS", "Root@X.io"),
            ("TETHER_ALLOW_GUESTS", "false"),
        ])
        .unwrap();
        assert_eq!(s.database_url, "sqlite:///tmp/x/tether.db");
        assert_eq!(s.token_ttl, Duration::from_secs(60));
        assert_eq!(s.allowed_origins, ["https://chat.example.com", "http://a.test:8080", "https://b.test"]);
        assert!(s.is_admin_email("root@x.IO"));
        assert!(!s.allow_guests);
        assert!(s.cookie_secure, "an https public origin makes the cookie Secure");
        assert!(!resolve(&[("TETHER_COOKIE_SECURE", "false"), ("TETHER_PUBLIC_ORIGIN", "https://a.b")]).unwrap().cookie_secure);
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (name, value) in [
            ("TETHER_JWT_SECRET", "short"),
            ("TETHER_TOKEN_TTL_SECS", "soon"),
            ("TETHER_ALLOW_GUESTS", "maybe"),
            ("TETHER_ALLOWED_ORIGINS", "*.evil.test"),
            ("TETHER_PUBLIC_ORIGIN", "ftp://x"),
        ] {
            let err = resolve(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
