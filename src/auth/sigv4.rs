//! SigV4 on the ECR API, in small pure steps: parse the `Authorization` header and
//! `X-Amz-Date`, check the scope and the clock skew, then sign the same request again with the
//! principal's secret using the `aws-sigv4` crate (the algorithm is not written by hand here)
//! and compare the two signatures in constant time. Knows nothing of HTTP frameworks: it takes
//! the method, path, headers as text and the body.

use super::authenticator::{Identities, Identity};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// How far a request's date may be from the server's clock, as AWS allows.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a signature was not accepted (each maps to ECR's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    Missing,
    /// A required part of the signature is missing (`IncompleteSignatureException`).
    #[error("{0}")]
    Incomplete(String),
    /// Not a SigV4 header, a malformed part, or a header that must be signed and is not.
    #[error("{0}")]
    Malformed(String),
    /// The access key id is not a principal's.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// The principal's secret is known only as a hash, which cannot sign.
    #[error("This principal's secret is kept only as a hash, which cannot verify SigV4 signatures: configure its secret_access_key_file to use the ECR API")]
    SecretNotKnown,
    /// The date is too far from the server's clock.
    #[error("Signature expired: {0} is now earlier or later than the server's time allows (15 min).")]
    Expired(String),
    /// The signature does not match.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")]
    Mismatch,
    /// The body does not hash to the `x-amz-content-sha256` that was signed.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    BodyMismatch,
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationV4 {
    /// The access key id.
    pub access_key_id: String,
    /// The scope's date, `yyyymmdd`.
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// The signed headers, lowercase, in the client's order.
    pub signed_headers: Vec<String>,
    /// The signature, hex.
    signature: String,
}

impl AuthorizationV4 {
    /// Parses the header.
    pub fn parse(header: &str) -> Result<Self, SigV4Error> {
        let malformed = |m: &str| SigV4Error::Malformed(m.to_owned());
        let rest = header
            .trim()
            .strip_prefix("AWS4-HMAC-SHA256")
            .ok_or_else(|| malformed("Authorization header requires the AWS4-HMAC-SHA256 algorithm"))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (key, value) =
                part.trim().split_once('=').ok_or_else(|| malformed("Authorization header is malformed"))?;
            match key.trim() {
                "Credential" => credential = Some(value.trim()),
                "SignedHeaders" => signed = Some(value.trim()),
                "Signature" => signature = Some(value.trim()),
                _ => return Err(malformed("Authorization header has an unknown part")),
            }
        }
        let incomplete =
            |part: &str| SigV4Error::Incomplete(format!("Authorization header requires '{part}' parameter."));
        let credential = credential.ok_or_else(|| incomplete("Credential"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
            return Err(malformed("Credential must be <key>/<date>/<region>/<service>/aws4_request"));
        };
        let signed_headers: Vec<String> =
            signed.ok_or_else(|| incomplete("SignedHeaders"))?.split(';').map(str::to_ascii_lowercase).collect();
        let signature = signature.ok_or_else(|| incomplete("Signature"))?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("Signature must be 64 hex characters"));
        }
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(must_be_signed("Host' or ':authority"));
        }
        Ok(Self {
            access_key_id: access_key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// Parses `X-Amz-Date` (`20261129T221000Z`).
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!("{}-{}-{}T{}:{}:{}Z", &s[0..4], &s[4..6], &s[6..8], &s[9..11], &s[11..13], &s[13..15]);
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// `'<name>' must be a 'SignedHeader' in the AWS Authorization.`, AWS's words.
fn must_be_signed(name: &str) -> SigV4Error {
    SigV4Error::Malformed(format!("'{name}' must be a 'SignedHeader' in the AWS Authorization."))
}

/// One request to verify.
pub struct SignedRequest<'a> {
    /// The method.
    pub method: &'a str,
    /// The path and query, as sent.
    pub path_and_query: &'a str,
    /// Every header, name (any case) and value.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// A request whose signature passed every check that needs no body: the header parses, the
/// scope is this registry's, the date is within the skew, the key is a principal's whose secret
/// is known, and every header that must be signed is. What is left is the signature itself,
/// which covers the body's hash ([`Prechecked::verify`]).
pub struct Prechecked {
    auth: AuthorizationV4,
    time: SystemTime,
    identity: Arc<Identity>,
    /// The body's hash when the client signed `x-amz-content-sha256` (lowercase hex): the
    /// signature can then be checked before the body is read, and the body against it after.
    pub signed_payload_hash: Option<String>,
}

/// Every check of a SigV4-signed request that needs no body, for `service` in `region`.
/// `required` names the headers (lowercase) that must be present and signed besides `host` and
/// `x-amz-date` (the ECR API: `x-amz-target` and `content-type`); every other `x-amz-*` header
/// the request carries must be signed too, so nothing that steers the request can be added to
/// a captured one.
pub fn precheck(
    headers: &[(String, String)],
    identities: &Identities,
    region: &str,
    service: &str,
    required: &[&str],
    now: SystemTime,
) -> Result<Prechecked, SigV4Error> {
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let auth = AuthorizationV4::parse(header("authorization").ok_or(SigV4Error::Missing)?)?;
    if auth.service != service || auth.region != region {
        return Err(SigV4Error::Malformed(format!(
            "Credential should be scoped to a valid region ({region}) and service ({service})"
        )));
    }
    let amz_date = header("x-amz-date").ok_or_else(|| {
        SigV4Error::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into(),
        )
    })?;
    let signed = |name: &str| auth.signed_headers.iter().any(|h| h == name);
    if !signed("x-amz-date") {
        return Err(must_be_signed("X-Amz-Date"));
    }
    for name in required {
        if header(name).is_none() {
            return Err(SigV4Error::Malformed(format!("the {name} header is required")));
        }
        if !signed(name) {
            return Err(must_be_signed(&display_name(name)));
        }
    }
    for (name, _) in headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-amz-") && !signed(&lower) {
            return Err(must_be_signed(&display_name(&lower)));
        }
    }
    let time = parse_amz_date(amz_date).ok_or_else(|| SigV4Error::Malformed("X-Amz-Date is malformed".into()))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Malformed("the Credential date does not match X-Amz-Date".into()));
    }
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(SigV4Error::Expired(amz_date.to_owned()));
    }
    let identity = identities.by_access_key(&auth.access_key_id).ok_or(SigV4Error::UnknownKey)?;
    if identity.secret().is_none() {
        return Err(SigV4Error::SecretNotKnown);
    }
    let signed_payload_hash = header("x-amz-content-sha256")
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    Ok(Prechecked { auth, time, identity, signed_payload_hash })
}

/// `x-amz-target` as AWS writes it in messages: `X-Amz-Target`, `Content-Type`.
fn display_name(lower: &str) -> String {
    lower
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| c.to_ascii_uppercase().to_string() + chars.as_str())
        })
        .collect::<Vec<_>>()
        .join("-")
}

impl Prechecked {
    /// The access key id the request names.
    pub fn access_key_id(&self) -> &str {
        &self.auth.access_key_id
    }

    /// Checks the signature over the request with the body's SHA-256 (`payload_hash`, lowercase
    /// hex): the principal that signed it, or `Mismatch`.
    pub fn verify(
        self,
        method: &str,
        path_and_query: &str,
        headers: &[(String, String)],
        region: &str,
        service: &str,
        payload_hash: &str,
    ) -> Result<Arc<Identity>, SigV4Error> {
        let secret = self.identity.secret().ok_or(SigV4Error::SecretNotKnown)?;
        // Sign exactly the headers the client signed, as it sent them.
        let mut signed = Vec::new();
        for name in &self.auth.signed_headers {
            let values: Vec<&str> =
                headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
            if values.is_empty() {
                return Err(SigV4Error::Malformed(format!("signed header {name} is missing")));
            }
            signed.extend(values.into_iter().map(|v| (name.as_str(), v)));
        }
        let credentials = aws_credential_types::Credentials::new(&self.auth.access_key_id, secret, None, None, "ferry");
        let identity_for_signing: aws_smithy_runtime_api::client::identity::Identity = credentials.into();
        let mut settings = SigningSettings::default();
        settings.excluded_headers = Some(Vec::new());
        let params = v4::SigningParams::builder()
            .identity(&identity_for_signing)
            .region(region)
            .name(service)
            .time(self.time)
            .settings(settings)
            .build()
            .map_err(|e| SigV4Error::Malformed(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            method,
            path_and_query,
            signed.into_iter(),
            SignableBody::Precomputed(payload_hash.to_owned()),
        )
        .map_err(|e| SigV4Error::Malformed(e.to_string()))?;
        let expected = sign(signable, &params).map_err(|e| SigV4Error::Malformed(e.to_string()))?;
        if bool::from(expected.signature().as_bytes().ct_eq(self.auth.signature.as_bytes())) {
            Ok(self.identity)
        } else {
            Err(SigV4Error::Mismatch)
        }
    }
}

/// Verifies a SigV4-signed request for `service` in `region` whose body is at hand; returns
/// the principal that signed it. `required` as for [`precheck`].
pub fn verify(
    request: &SignedRequest<'_>,
    identities: &Identities,
    region: &str,
    service: &str,
    required: &[&str],
    now: SystemTime,
) -> Result<Arc<Identity>, SigV4Error> {
    let pre = precheck(request.headers, identities, region, service, required, now)?;
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(request.body));
    if pre.signed_payload_hash.as_ref().is_some_and(|signed| *signed != hash) {
        return Err(SigV4Error::BodyMismatch);
    }
    pre.verify(request.method, request.path_and_query, request.headers, region, service, &hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_header_and_the_date() {
        let h = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let a = AuthorizationV4::parse(h).unwrap();
        assert_eq!(
            (a.access_key_id.as_str(), a.date.as_str(), a.region.as_str(), a.service.as_str()),
            ("AKIDEXAMPLE", "20150830", "us-east-1", "iam")
        );
        assert_eq!(a.signed_headers, ["content-type", "host", "x-amz-date"]);
        for bad in [
            "",
            "Basic abc",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ] {
            assert!(AuthorizationV4::parse(bad).is_err(), "{bad}");
        }
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(t, humantime::parse_rfc3339("2015-08-30T12:36:00Z").unwrap());
        assert!(parse_amz_date("2015-08-30T12:36:00Z").is_none());
    }

    /// AWS's documented example (get-vanilla-query-order-key-case, from the SigV4 test
    /// suite): the secret `wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY` signs GET /?Param2=value2&Param1=value1.
    #[test]
    fn verifies_aws_example_vector_and_refuses_changes() {
        let cfg = crate::config::AuthConfig {
            enabled: true,
            registry_id: "123456789012".into(),
            principals: vec![crate::config::PrincipalConfig {
                name: "example".into(),
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key_file: {
                    let dir = std::env::temp_dir().join(format!("ferry-sigv4-{}", std::process::id()));
                    std::fs::create_dir_all(&dir).unwrap();
                    let f = dir.join("secret");
                    std::fs::write(&f, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap();
                    f.display().to_string()
                },
                ..Default::default()
            }],
            ..Default::default()
        };
        let identities = Identities::from_config(&cfg).unwrap();
        let headers = |sig: &str| {
            vec![
                ("Host".to_owned(), "example.amazonaws.com".to_owned()),
                ("X-Amz-Date".to_owned(), "20150830T123600Z".to_owned()),
                ("Authorization".to_owned(), format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}")),
            ]
        };
        let good = headers("b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
        let request =
            SignedRequest { method: "GET", path_and_query: "/?Param2=value2&Param1=value1", headers: &good, body: b"" };
        let now = parse_amz_date("20150830T123900Z").unwrap();
        let who = verify(&request, &identities, "us-east-1", "service", &[], now).unwrap();
        assert_eq!(who.name, "example");
        // Another method, a day later, a different signature: refused.
        let changed = SignedRequest { method: "POST", ..request };
        assert_eq!(verify(&changed, &identities, "us-east-1", "service", &[], now).err(), Some(SigV4Error::Mismatch));
        let late = parse_amz_date("20150831T123600Z").unwrap();
        let request = SignedRequest { method: "GET", ..changed };
        assert!(matches!(
            verify(&request, &identities, "us-east-1", "service", &[], late),
            Err(SigV4Error::Expired(_))
        ));
        let other = headers("a97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
        let forged = SignedRequest { headers: &other, ..request };
        assert_eq!(verify(&forged, &identities, "us-east-1", "service", &[], now).err(), Some(SigV4Error::Mismatch));
    }

    /// Signs a POST to the ECR API as an SDK would, leaving out of the signature the headers
    /// named in `unsigned`.
    fn sign_ecr(
        headers: &[(&str, &str)],
        unsigned: &[&'static str],
        body: &[u8],
        secret: &str,
    ) -> Vec<(String, String)> {
        let credentials = aws_credential_types::Credentials::new("AKIDEXAMPLE", secret, None, None, "test");
        let identity: aws_smithy_runtime_api::client::identity::Identity = credentials.into();
        let mut settings = SigningSettings::default();
        let mut excluded = settings.excluded_headers.take().unwrap_or_default();
        excluded.extend(unsigned.iter().map(|h| std::borrow::Cow::Borrowed(*h)));
        settings.excluded_headers = Some(excluded);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("ecr")
            .time(parse_amz_date("20261203T120000Z").unwrap())
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new("POST", "/", headers.iter().copied(), SignableBody::Bytes(body)).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut out: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        for (n, v) in instructions.headers() {
            out.push((n.to_owned(), v.to_owned()));
        }
        out
    }

    #[test]
    fn the_ecr_api_needs_host_date_target_and_content_type_signed() {
        let dir = tempfile_dir("required");
        let f = dir.join("secret");
        std::fs::write(&f, "s3cr3t").unwrap();
        let cfg = crate::config::AuthConfig {
            enabled: true,
            principals: vec![crate::config::PrincipalConfig {
                name: "ci".into(),
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key_file: f.display().to_string(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let identities = Identities::from_config(&cfg).unwrap();
        let now = parse_amz_date("20261203T120100Z").unwrap();
        let required = ["x-amz-target", "content-type"];
        let base = [
            ("host", "127.0.0.1:5000"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories"),
        ];
        let body = b"{}";
        let check = |headers: &[(String, String)]| {
            let request = SignedRequest { method: "POST", path_and_query: "/", headers, body };
            verify(&request, &identities, "us-east-1", "ecr", &required, now)
        };
        // Everything signed: accepted.
        assert_eq!(check(&sign_ecr(&base, &[], body, "s3cr3t")).unwrap().name, "ci");
        // Each required header left out of the signature: refused before any body matters.
        for (unsigned, name) in [("x-amz-target", "X-Amz-Target"), ("content-type", "Content-Type")] {
            let e = check(&sign_ecr(&base, &[unsigned], body, "s3cr3t")).unwrap_err();
            assert_eq!(
                e,
                SigV4Error::Malformed(format!("'{name}' must be a 'SignedHeader' in the AWS Authorization."))
            );
        }
        // A date that is not signed, or not there.
        let e = check(&sign_ecr(&base, &["x-amz-date"], body, "s3cr3t")).unwrap_err();
        assert!(matches!(&e, SigV4Error::Malformed(m) if m.contains("'X-Amz-Date' must be")), "{e:?}");
        let no_date: Vec<(String, String)> = sign_ecr(&base, &[], body, "s3cr3t")
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("x-amz-date"))
            .collect();
        let e = check(&no_date).unwrap_err();
        assert!(matches!(e, SigV4Error::Incomplete(_)), "{e:?}");
        // A captured request replayed with another target: the signature no longer matches.
        let mut replayed = sign_ecr(&base, &[], body, "s3cr3t");
        for (n, v) in &mut replayed {
            if n == "x-amz-target" {
                *v = "AmazonEC2ContainerRegistry_V20150921.DeleteRepository".into();
            }
        }
        assert_eq!(check(&replayed).unwrap_err(), SigV4Error::Mismatch);
        // Any other x-amz-* header must be signed too.
        let mut extra = sign_ecr(&base, &[], body, "s3cr3t");
        extra.push(("X-Amz-Security-Token".into(), "anything".into()));
        assert!(matches!(check(&extra), Err(SigV4Error::Malformed(m)) if m.contains("'X-Amz-Security-Token'")));
        // A missing Signature part is incomplete, in AWS's words.
        let e = AuthorizationV4::parse(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261203/us-east-1/ecr/aws4_request, SignedHeaders=host",
        )
        .unwrap_err();
        assert_eq!(e, SigV4Error::Incomplete("Authorization header requires 'Signature' parameter.".into()));
        // A signed body hash is checked against the body.
        let with_hash = [
            ("host", "127.0.0.1:5000"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories"),
            ("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ];
        let signed = sign_ecr(&with_hash, &[], body, "s3cr3t");
        let request = SignedRequest { method: "POST", path_and_query: "/", headers: &signed, body };
        assert_eq!(
            verify(&request, &identities, "us-east-1", "ecr", &required, now).unwrap_err(),
            SigV4Error::BodyMismatch
        );
    }

    fn tempfile_dir(what: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-sigv4-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
