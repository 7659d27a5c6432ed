//! `[server]` and `[tls]`: listeners, limits, timeouts and certificates.

use super::units::HumanDuration;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Registry API address. Default `"127.0.0.1:5000"`.
    pub listen: String,
    /// Admin address for `/metrics`, `/healthz`, `/readyz`. Default `"127.0.0.1:5090"`.
    pub admin_listen: String,
    /// Time a client has to send a request's headers; also closes idle keep-alive connections. Default `"30s"`.
    pub header_read_timeout: HumanDuration,
    /// Requests served at once; more get 429 with `Retry-After`. Default `1024`.
    pub max_in_flight_requests: usize,
    /// Requests served at once for one client address, so one client cannot take every
    /// permit. Default `512`.
    pub max_in_flight_per_client: usize,
    /// Upload sessions one client address may hold open at once. Default `1024`.
    pub max_uploads_per_client: usize,
    /// A request body that delivers no byte for this long is cut off (408). Default `"30s"`.
    pub body_read_timeout: HumanDuration,
    /// A client that accepts no byte of a response for this long is disconnected. Default `"60s"`.
    pub send_timeout: HumanDuration,
    /// Behind a proxy or load balancer: the header it sets to the client's address (e.g.
    /// `"X-Forwarded-For"`; its right-most entry is used), so per-client limits apply to
    /// clients rather than to the proxy. Default `""` (the connection's peer address).
    pub client_address_header: String,
    /// On SIGTERM/SIGINT, how long in-flight requests may run before they are cut. Default `"30s"`.
    pub shutdown_grace: HumanDuration,
    /// ECR API request bodies read before their signature could be checked (SigV4 covers the
    /// body, so it must be read first), in bytes, across all clients; a request past it is
    /// throttled before a byte of its body is read. Such requests hold no in-flight permit.
    /// Default `134217728` (128 MiB).
    pub unverified_body_bytes: u64,
    /// The same, for one client address, and for one access key id (key ids are not secrets:
    /// a flood naming one holds only its share). Default `33554432` (32 MiB: two layer parts).
    pub unverified_body_bytes_per_client: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5000".into(),
            admin_listen: "127.0.0.1:5090".into(),
            header_read_timeout: HumanDuration(Duration::from_secs(30)),
            max_in_flight_requests: 1024,
            max_in_flight_per_client: 512,
            max_uploads_per_client: 1024,
            body_read_timeout: HumanDuration(Duration::from_secs(30)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            client_address_header: String::new(),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            unverified_body_bytes: 128 << 20,
            unverified_body_bytes_per_client: 32 << 20,
        }
    }
}

/// `[tls]`: both `cert` and `key` (PEM files) turn TLS on for the registry listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM. Default `""` (no TLS).
    pub cert: String,
    /// Private key, PEM. Default `""` (no TLS).
    pub key: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty()
    }
}

impl ServerConfig {
    /// Checks addresses, limits and timeouts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [("server.listen", &self.listen), ("server.admin_listen", &self.admin_listen)] {
            if v.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{v:?} is not an address such as \"127.0.0.1:5000\""),
                });
            }
        }
        for (key, v) in [
            ("server.max_in_flight_requests", self.max_in_flight_requests),
            ("server.max_in_flight_per_client", self.max_in_flight_per_client),
            ("server.max_uploads_per_client", self.max_uploads_per_client),
            ("server.unverified_body_bytes", usize::try_from(self.unverified_body_bytes).unwrap_or(usize::MAX)),
            (
                "server.unverified_body_bytes_per_client",
                usize::try_from(self.unverified_body_bytes_per_client).unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid { key, message: "must be at least 1".into() });
            }
        }
        for (key, v) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.body_read_timeout", self.body_read_timeout),
            ("server.send_timeout", self.send_timeout),
        ] {
            if v.0.is_zero() {
                return Err(ConfigError::Invalid { key, message: "must be more than 0s".into() });
            }
        }
        if !self.client_address_header.is_empty()
            && http::HeaderName::from_bytes(self.client_address_header.as_bytes()).is_err()
        {
            return Err(ConfigError::Invalid {
                key: "server.client_address_header",
                message: format!("{:?} is not a header name such as \"X-Forwarded-For\"", self.client_address_header),
            });
        }
        Ok(())
    }
}

impl TlsConfig {
    /// Checks that both files are given and readable, when TLS is on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let pair = [("tls.cert", &self.cert), ("tls.key", &self.key)];
        if let Some((key, _)) = pair.iter().find(|(_, v)| v.is_empty()) {
            return Err(ConfigError::Invalid {
                key,
                message: "TLS needs both tls.cert and tls.key (PEM files)".into(),
            });
        }
        if let Some((key, v)) = pair.iter().find(|(_, v)| !Path::new(v).is_file()) {
            return Err(ConfigError::Invalid { key, message: format!("{v:?} is not a readable file") });
        }
        Ok(())
    }
}
