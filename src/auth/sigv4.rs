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
    /// Not a SigV4 header, or a malformed part.
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
        let credential = credential.ok_or_else(|| malformed("Authorization header requires a Credential"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
            return Err(malformed("Credential must be <key>/<date>/<region>/<service>/aws4_request"));
        };
        let signed_headers: Vec<String> = signed
            .ok_or_else(|| malformed("Authorization header requires SignedHeaders"))?
            .split(';')
            .map(str::to_ascii_lowercase)
            .collect();
        let signature = signature.ok_or_else(|| malformed("Authorization header requires a Signature"))?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("Signature must be 64 hex characters"));
        }
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(malformed("SignedHeaders must include host"));
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

/// Verifies a SigV4-signed request for `service` in `region`; returns the principal that
/// signed it.
pub fn verify(
    request: &SignedRequest<'_>,
    identities: &Identities,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<Arc<Identity>, SigV4Error> {
    let header =
        |name: &str| request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let auth = AuthorizationV4::parse(header("authorization").ok_or(SigV4Error::Missing)?)?;
    if auth.service != service || auth.region != region {
        return Err(SigV4Error::Malformed(format!(
            "Credential should be scoped to a valid region ({region}) and service ({service})"
        )));
    }
    let amz_date = header("x-amz-date").ok_or_else(|| SigV4Error::Malformed("X-Amz-Date is required".into()))?;
    let time = parse_amz_date(amz_date).ok_or_else(|| SigV4Error::Malformed("X-Amz-Date is malformed".into()))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Malformed("the Credential date does not match X-Amz-Date".into()));
    }
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(SigV4Error::Expired(amz_date.to_owned()));
    }
    let identity = identities.by_access_key(&auth.access_key_id).ok_or(SigV4Error::UnknownKey)?;
    let secret = identity.secret().ok_or(SigV4Error::SecretNotKnown)?;
    // Sign exactly the headers the client signed, as it sent them.
    let mut signed = Vec::new();
    for name in &auth.signed_headers {
        let values: Vec<&str> =
            request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
        if values.is_empty() {
            return Err(SigV4Error::Malformed(format!("signed header {name} is missing")));
        }
        signed.extend(values.into_iter().map(|v| (name.as_str(), v)));
    }
    let credentials = aws_credential_types::Credentials::new(&auth.access_key_id, secret, None, None, "ferry");
    let identity_for_signing: aws_smithy_runtime_api::client::identity::Identity = credentials.into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(Vec::new());
    let params = v4::SigningParams::builder()
        .identity(&identity_for_signing)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SigV4Error::Malformed(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.path_and_query,
        signed.into_iter(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| SigV4Error::Malformed(e.to_string()))?;
    let expected = sign(signable, &params).map_err(|e| SigV4Error::Malformed(e.to_string()))?;
    if bool::from(expected.signature().as_bytes().ct_eq(auth.signature.as_bytes())) {
        Ok(identity)
    } else {
        Err(SigV4Error::Mismatch)
    }
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
        let who = verify(&request, &identities, "us-east-1", "service", now).unwrap();
        assert_eq!(who.name, "example");
        // Another method, a day later, a different signature: refused.
        let changed = SignedRequest { method: "POST", ..request };
        assert_eq!(verify(&changed, &identities, "us-east-1", "service", now).err(), Some(SigV4Error::Mismatch));
        let late = parse_amz_date("20150831T123600Z").unwrap();
        let request = SignedRequest { method: "GET", ..changed };
        assert!(matches!(verify(&request, &identities, "us-east-1", "service", late), Err(SigV4Error::Expired(_))));
        let other = headers("a97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
        let forged = SignedRequest { headers: &other, ..request };
        assert_eq!(verify(&forged, &identities, "us-east-1", "service", now).err(), Some(SigV4Error::Mismatch));
    }
}
