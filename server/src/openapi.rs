//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the response types in `routes/` and `error.rs`. Served at
//! `GET /api/openapi.json` by [`router`] (here rather than in `routes/`, so the routes do not
//! import the document that lists them).

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;
use crate::routes::{chat, checkpoints, evals, memory, spans, system, timeline};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(openapi))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "LogLine",
        description = "HTTP API over LogLine's governed, append-only ledger: append spans, read \
                       them and their versions, query and stream the timeline, verify the hash \
                       chain. Every error is an `application/problem+json` document (RFC 9457).\n\n\
                       With a JWT secret or public key configured, every `/api` route except this \
                       document needs `Authorization: Bearer <jwt>`; without one the server binds \
                       only to loopback and every request acts as its local user. A token whose \
                       `nbf` or `iat` is more than 60 s in the future is refused (401).\n\n\
                       Request bodies may be gzip (`Content-Encoding: gzip`); the body limit \
                       applies to the decoded size.",
    ),
    paths(
        spans::post_spans,
        spans::get_span,
        spans::get_versions,
        timeline::timeline,
        timeline::stream,
        system::verify,
        system::manifest,
        system::healthz,
        system::readyz,
        system::metrics,
        openapi,
        chat::chat,
        chat::confirm,
        chat::feedback,
        chat::variants,
        chat::reviews,
        chat::review,
        spans::verify_span,
        evals::evals,
        spans::span_proof,
        checkpoints::latest,
        checkpoints::consistency,
        memory::list,
        memory::remember,
        memory::forget_one,
        memory::forget,
        memory::export,
        memory::promote,
        memory::promotions,
        memory::decide_promotion,
    ),
    components(schemas(
        Problem,
        memory::MemoryList,
        memory::RememberBody,
        memory::Forgotten,
        crate::memory::MemoryItem,
        crate::memory::MemoryKind,
        crate::memory::ForgetTarget,
        crate::memory::Promotion,
        memory::Promotions,
        memory::PromotionDecision,
        spans::SpanDraft,
        spans::NdjsonSpans,
        spans::Visibility,
        spans::Span,
        spans::AppendResult,
        spans::Versions,
        checkpoints::CheckpointView,
        timeline::TimelinePage,
        system::VerifyReport,
        system::ChainBreak,
        system::Health,
        system::Ready,
        chat::ChatBody,
        chat::ChatAnswer,
        chat::ConfirmBody,
        chat::ConfirmAction,
        chat::Confirmed,
        chat::FeedbackBody,
        chat::FeedbackRecorded,
        chat::VariantState,
        chat::Variants,
        chat::Reviews,
        chat::ReviewBody,
        chat::ReviewDecision,
        chat::Reviewed,
        evals::EvalsPage,
    )),
    modifiers(&BearerJwt, &EdgeResponses),
    tags(
        (name = "spans", description = "Appending and reading spans."),
        (name = "timeline", description = "Querying and streaming the timeline."),
        (name = "chat", description = "The conversational agent, amendment confirmation and escalation reviews."),
        (name = "system", description = "Health, metrics, the manifest, chain verification."),
        (name = "evals", description = "Evaluation runs, pass rates and prompt versions (the learning loop)."),
        (name = "memory", description = "The caller's own remembered items: list, remember, forget for real, export."),
    ),
)]
struct ApiDoc;

/// The `bearer` security scheme the `/api` operations name.
struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "HS256 or EdDSA JWT with claims `sub` (user), `tenant`, `roles` and `exp` \
                 (`logline token issue` makes one). Not needed when the server runs without \
                 authentication on loopback.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The refusals of the connection edge and the body decoder (`edge.rs`, `serve.rs`), which
/// can answer any operation before its handler runs: added to every operation's responses
/// (415 only where a request body is taken and the handler does not document it already).
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        crate::error::PROBLEM_JSON,
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                responses.entry("414".into()).or_insert_with(|| {
                    problem("The request target (path and query) is longer than 16 KiB.")
                });
                responses.entry("431".into()).or_insert_with(|| {
                    problem("The request head is over 64 KiB or has more than 100 header fields.")
                });
                if has_body {
                    responses.entry("415".into()).or_insert_with(|| {
                        problem("A `Content-Encoding` other than gzip (or none).")
                    });
                }
            }
        }
    }
}

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize the OpenAPI document");
        serde_json::json!({"openapi": "3.1.0",
            "info": {"title": "LogLine", "version": env!("CARGO_PKG_VERSION")}, "paths": {}})
    })
}

/// This document
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object, content_type = "application/json")),
)]
async fn openapi() -> Response {
    axum::Json(document()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::StatusCode;
    use serde_json::{Value, json};

    use super::document;

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn strings(v: &Value) -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_api_routes_name_the_bearer_scheme() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = &doc["paths"];
        let documented: BTreeSet<String> = keys(paths);
        let routes = [
            "/api/spans",
            "/api/spans/{id}",
            "/api/spans/{id}/versions",
            "/api/spans/{id}/verify",
            "/api/spans/{id}/proof",
            "/api/checkpoints/latest",
            "/api/checkpoints/consistency",
            "/api/timeline",
            "/api/timeline/stream",
            "/api/verify",
            "/api/openapi.json",
            "/api/chat",
            "/api/chat/confirm",
            "/api/chat/feedback",
            "/api/variants",
            "/api/reviews",
            "/api/reviews/{id}",
            "/api/evals",
            "/api/memory",
            "/api/memory/{id}",
            "/api/memory/forget",
            "/api/memory/export",
            "/api/memory/{id}/promote",
            "/api/memory/promotions",
            "/api/memory/promotions/{id}",
            "/manifest/{name}",
            "/healthz",
            "/readyz",
            "/metrics",
        ];
        assert_eq!(documented, routes.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, item) in paths.as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let secured = op.get("security").is_some();
                let needs_caller = path.starts_with("/api/") && path != "/api/openapi.json";
                assert_eq!(secured, needs_caller, "{method} {path}");
                if needs_caller {
                    assert_eq!(op["security"], json!([{"bearer": []}, {}]), "{path}");
                    assert!(op["responses"].get("401").is_some(), "{path}: no 401");
                    assert!(op["responses"].get("429").is_some(), "{path}: no 429");
                }
                for edge in ["414", "431"] {
                    assert!(
                        op["responses"].get(edge).is_some(),
                        "{method} {path}: no {edge}"
                    );
                }
                if op.get("requestBody").is_some() {
                    assert!(
                        op["responses"].get("415").is_some(),
                        "{method} {path}: no 415"
                    );
                }
                for (status, resp) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') && !(path == "/api/verify" && status == "409") {
                        assert_eq!(
                            resp["content"]["application/problem+json"]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        let timeline: BTreeSet<String> = paths["/api/timeline"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        for p in [
            "entity_type",
            "who",
            "did",
            "this",
            "status",
            "tenant",
            "owner",
            "since",
            "until",
            "related_to",
            "trace_id",
            "limit",
            "cursor",
            "order",
        ] {
            assert!(timeline.contains(p), "timeline lacks `{p}`");
        }
    }

    #[tokio::test]
    async fn problem_documents_match_their_schema() {
        let doc = document();
        let problem = schema(&doc, "Problem");
        let resp = crate::error::ApiError::Unprocessable {
            detail: "bad".into(),
            line: Some(3),
        };
        let resp = axum::response::IntoResponse::into_response(resp);
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let mut documented = keys(&problem["properties"]);
        assert!(documented.remove("run_id"), "run_id is documented");
        assert_eq!(keys(&body), documented);
        assert!(strings(&problem["required"]).is_subset(&keys(&body)));

        // A chat turn the provider failed names its recorded run.
        let run = uuid::Uuid::now_v7();
        let resp = axum::response::IntoResponse::into_response(crate::error::ApiError::Provider {
            status: 502,
            detail: "the model provider failed".into(),
            run_id: Some(run),
        });
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["run_id"], json!(run.to_string()));
        assert!(keys(&body).is_subset(&keys(&problem["properties"])));
    }

    #[test]
    fn the_verify_report_schema_matches_the_ledger_report() {
        let doc = document();
        let problem = ledger::verify::Problem {
            kind: ledger::verify::ProblemKind::ColumnMismatch,
            chain_pos: Some(1),
            span_id: None,
            table: "spans",
            column: Some("status"),
            stored: None,
            signed: None,
            reason: "r".into(),
        };
        let report = serde_json::to_value(ledger::verify::TenantReport {
            tenant_id: "t".into(),
            spans: 2,
            ok: false,
            first_break: Some(problem.clone()),
            problems: vec![problem],
            problem_count: 1,
        })
        .unwrap();
        let s = schema(&doc, "VerifyReport");
        assert_eq!(keys(&report), keys(&s["properties"]));
        assert_eq!(keys(&report), strings(&s["required"]));
        let b = schema(&doc, "ChainBreak");
        assert_eq!(keys(&report["first_break"]), keys(&b["properties"]));
        assert_eq!(keys(&report["first_break"]), strings(&b["required"]));
        assert_eq!(keys(&report["problems"][0]), keys(&b["properties"]));
    }
}
