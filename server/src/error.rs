//! One error type for the HTTP API, mapped once to `application/problem+json` (RFC 9457).
//! A 5xx logs the whole chain and tells the client only what is safe.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger::checkpoint::TreeError;
use ledger::{InputError, StoreError};
use serde_json::json;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The body of every error response: an RFC 9457 problem document, sent as
/// `application/problem+json`. (Built by `problem()`; this type describes it in the OpenAPI
/// document.)
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "/problems/not-found", "title": "Not Found", "status": 404,
    "detail": "span 0190f0b4-8c4e-7d2a-9f3e-2b1c0d9e8f7a not found or not visible to you"}))]
pub struct Problem {
    /// The problem type, a relative URI: `/problems/<slug>` (`bad-request`, `unauthorized`,
    /// `forbidden`, `not-found`, `method-not-allowed`, `conflict`, `invalid-span`,
    /// `payload-too-large`, `unsupported-media-type`, `rate-limited`, `unavailable`, `provider`,
    /// `internal`).
    #[serde(rename = "type")]
    #[schema(format = "uri-reference")]
    pub problem_type: String,
    /// The reason phrase of the status code.
    pub title: String,
    /// The HTTP status code, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, for a person to read.
    pub detail: String,
    /// For a refused line of an NDJSON body: its 1-based line number.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub line: Option<u64>,
    /// For a chat turn the model provider failed: the `prompt_run` span that records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub run_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{detail}")]
    Unprocessable { detail: String, line: Option<usize> },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("rate limit exceeded for tenant `{tenant}`; retry in {retry_after} s")]
    RateLimited { tenant: String, retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The model provider failed a chat turn (502, 503 or 504); the turn was still recorded.
    #[error("{detail}")]
    Provider {
        status: u16,
        detail: String,
        run_id: Option<uuid::Uuid>,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Provider { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::Unprocessable { .. } => "invalid-span",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::RateLimited { .. } => "rate-limited",
            Self::Unavailable(_) => "unavailable",
            Self::Provider { .. } => "provider",
            Self::Internal(_) => "internal",
        }
    }

    /// A span the ledger refused: foreign tenants are 403, everything else 422.
    pub fn from_input(e: InputError, line: Option<usize>) -> Self {
        match e {
            InputError::ForeignTenant { .. } | InputError::ForeignOwner { .. } => {
                Self::Forbidden(e.to_string())
            }
            InputError::TooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
            other => Self::Unprocessable {
                detail: other.to_string(),
                line,
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::NotFound(e.to_string()),
            StoreError::NotOwner(_) => Self::Forbidden(e.to_string()),
            StoreError::AlreadyRedacted(_) => Self::Conflict(e.to_string()),
            StoreError::Input(i) => Self::from_input(i, None),
            StoreError::Append(a) => Self::Conflict(a.to_string()),
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<TreeError> for ApiError {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Store(s) => s.into(),
            TreeError::NoTree { .. } => Self::NotFound(e.to_string()),
            TreeError::BeyondTree { .. } => Self::Unprocessable {
                detail: e.to_string(),
                line: None,
            },
            // The ledger disagrees with what it signed before: a conflict to report, never to
            // paper over with a new signature.
            TreeError::Truncated { .. } | TreeError::Fork { .. } => Self::Conflict(e.to_string()),
            TreeError::Checkpoint { .. } => Self::Internal(anyhow::Error::new(e)),
        }
    }
}

/// Builds a problem document; also used to rewrite framework rejections.
pub fn problem(
    status: StatusCode,
    slug: &str,
    detail: &str,
    extra: Option<(&str, serde_json::Value)>,
) -> Response {
    let mut body = json!({
        "type": format!("/problems/{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "the server failed to handle this request; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let extra = match &self {
            Self::Unprocessable { line: Some(l), .. } => Some(("line", json!(l))),
            Self::Provider {
                run_id: Some(r), ..
            } => Some(("run_id", json!(r))),
            _ => None,
        };
        let mut resp = problem(status, self.slug(), &detail, extra);
        if matches!(self, Self::Unauthorized(_)) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::RateLimited { retry_after, .. } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
