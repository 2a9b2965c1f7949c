//! Who is calling. With a JWT secret (HS256) or an Ed25519 public key (EdDSA) configured, every
//! `/api` request needs `Authorization: Bearer <jwt>` with claims `sub`, `tenant`, `roles`, `exp`;
//! without either, the server is single-user and binds only to loopback.
//!
//! JWTs are checked here rather than with `jsonwebtoken`: only two algorithms are accepted, and
//! its pure-Rust backend would pull a second Ed25519 major version plus RSA and NIST curves.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use ledger::Principal;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;

/// A secret whose `Debug` never prints it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug)]
pub enum Auth {
    /// No authentication: every request acts as this principal (loopback only).
    Local(Principal),
    Jwt {
        hs256: Option<Secret>,
        eddsa: Option<VerifyingKey>,
    },
}

impl Auth {
    pub fn is_enabled(&self) -> bool {
        matches!(self, Self::Jwt { .. })
    }

    /// Resolves the caller from a bearer token (or the local principal when auth is off).
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Caller, ApiError> {
        match self {
            Self::Local(p) => Ok(Caller {
                principal: p.clone(),
                roles: vec!["admin".into()],
            }),
            Self::Jwt { hs256, eddsa } => {
                let token = bearer.ok_or_else(|| {
                    ApiError::Unauthorized(
                        "missing bearer token: send `Authorization: Bearer <jwt>`".into(),
                    )
                })?;
                let claims = verify(token, hs256.as_ref(), eddsa.as_ref(), now())?;
                Ok(Caller {
                    principal: Principal::new(claims.sub, claims.tenant),
                    roles: claims.roles,
                })
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub roles: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    /// Issued at (0: not stated). A token issued further in the future than [`LEEWAY_SECS`] is
    /// refused: its clock, or its issuer, is not to be trusted.
    #[serde(default)]
    pub iat: i64,
    /// Not before: refused until then (less [`LEEWAY_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Clock skew tolerated between the token's issuer and this server for `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 60;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hmac(secret: &Secret, signing_input: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(signing_input);
    mac
}

/// Issues an HS256 token (used by `logline token issue` and tests).
pub fn issue(secret: &Secret, claims: &Claims) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{header}.{body}");
    let sig = B64.encode(hmac(secret, input.as_bytes()).finalize().into_bytes());
    format!("{input}.{sig}")
}

fn bad(why: &str) -> ApiError {
    ApiError::Unauthorized(format!("invalid token: {why}"))
}

pub fn verify(
    token: &str,
    hs256: Option<&Secret>,
    eddsa: Option<&VerifyingKey>,
    now: i64,
) -> Result<Claims, ApiError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a JWT (expected three dot-separated parts)"));
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("unreadable header"))?;
    let sig = B64.decode(s).map_err(|_| bad("unreadable signature"))?;
    let input = format!("{h}.{c}");
    match (header.alg.as_str(), hs256, eddsa) {
        ("HS256", Some(secret), _) => hmac(secret, input.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| bad("signature does not match"))?,
        ("EdDSA", _, Some(key)) => {
            let sig: [u8; 64] = sig
                .try_into()
                .map_err(|_| bad("EdDSA signature is not 64 bytes"))?;
            key.verify_strict(input.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| bad("signature does not match"))?
        }
        (alg, _, _) => return Err(bad(&format!("algorithm `{alg}` is not accepted here"))),
    }
    let claims: Claims = B64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("claims must include sub, tenant and exp"))?;
    if claims.exp <= now {
        return Err(ApiError::Unauthorized("token expired".into()));
    }
    if let Some(nbf) = claims.nbf
        && nbf > now + LEEWAY_SECS
    {
        return Err(ApiError::Unauthorized(format!(
            "token not valid yet: nbf is {} s from now (leeway {LEEWAY_SECS} s)",
            nbf - now
        )));
    }
    if claims.iat > now + LEEWAY_SECS {
        return Err(ApiError::Unauthorized(format!(
            "token issued in the future: iat is {} s from now (leeway {LEEWAY_SECS} s)",
            claims.iat - now
        )));
    }
    if claims.sub.is_empty() || claims.tenant.is_empty() {
        return Err(bad("empty sub or tenant"));
    }
    Ok(claims)
}

/// Parses `30m`, `1h`, `7d` or plain seconds.
pub fn parse_ttl(s: &str) -> Result<i64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30m, 1h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}` is not a duration like 30m, 1h or 7d")),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "ana".into(),
            tenant: "bakery".into(),
            roles: vec!["member".into()],
            exp,
            iat: 0,
            nbf: None,
        }
    }

    #[test]
    fn an_issued_token_verifies_and_a_tampered_one_does_not() {
        let secret = Secret::new("s3cret");
        let t = issue(&secret, &claims(2_000));
        assert_eq!(
            verify(&t, Some(&secret), None, 1_000).unwrap(),
            claims(2_000)
        );
        assert!(verify(&t, Some(&Secret::new("other")), None, 1_000).is_err());
        let forged = issue(
            &secret,
            &Claims {
                tenant: "rival".into(),
                ..claims(2_000)
            },
        );
        let mixed = format!(
            "{}.{}",
            &t[..t.rfind('.').unwrap()].split('.').next().unwrap(),
            forged.split('.').nth(1).unwrap()
        );
        let mixed = format!("{mixed}.{}", t.rsplit('.').next().unwrap());
        assert!(verify(&mixed, Some(&secret), None, 1_000).is_err());
    }

    #[test]
    fn expired_tokens_and_the_none_algorithm_are_refused() {
        let secret = Secret::new("s3cret");
        let t = issue(&secret, &claims(500));
        assert!(
            verify(&t, Some(&secret), None, 1_000)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(serde_json::to_vec(&claims(2_000)).unwrap())
        );
        assert!(verify(&none, Some(&secret), None, 1_000).is_err());
    }

    #[test]
    fn a_token_not_yet_valid_or_issued_in_the_future_is_refused_beyond_the_leeway() {
        let secret = Secret::new("s3cret");
        let at = |nbf: Option<i64>, iat: i64| {
            let t = issue(
                &secret,
                &Claims {
                    nbf,
                    iat,
                    ..claims(5_000)
                },
            );
            verify(&t, Some(&secret), None, 1_000).map_err(|e| e.to_string())
        };
        assert!(at(Some(1_000 + LEEWAY_SECS), 900).is_ok());
        assert!(at(None, 1_000 + LEEWAY_SECS).is_ok());
        let e = at(Some(1_000 + LEEWAY_SECS + 1), 900).unwrap_err();
        assert!(e.contains("not valid yet") && e.contains("nbf"), "{e}");
        let e = at(None, 1_000 + LEEWAY_SECS + 1).unwrap_err();
        assert!(
            e.contains("issued in the future") && e.contains("iat"),
            "{e}"
        );
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("45"), Ok(45));
        assert!(parse_ttl("soon").is_err());
    }
}
