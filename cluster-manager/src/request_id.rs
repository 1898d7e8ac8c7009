//! The request id: one string that follows a client request from the Merger to every
//! Searcher call made for it, so that the logs of all processes can be joined on it.
//!
//! - The Merger takes the client's `x-request-id` metadata when it is valid (see
//!   [`is_valid`]) and otherwise generates a UUID v4 ([`RequestIdLayer::generating`]).
//! - The id is recorded on a `request` tracing span around the call (`request_id`,
//!   `method` fields), so every event logged while serving it carries the id (JSON logs
//!   print the span's fields with each line).
//! - It is echoed in the response's `x-request-id` metadata, on success and on errors
//!   alike (a gRPC error's metadata travels in the same headers).
//! - While the call runs it is the task's current id ([`current`]); [`attach`] adds it to
//!   an outgoing Searcher call, whose server reads it with [`RequestIdLayer::passing`].
//!
//! Both directions live here so the Merger and the Searcher cannot disagree on the header
//! or the rules.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tracing::Instrument;

/// The metadata key (an HTTP/2 header) carrying the id.
pub const HEADER: &str = "x-request-id";

/// The longest id accepted from a client; longer ones are replaced by a generated id.
pub const MAX_LENGTH: usize = 128;

/// Whether a client-supplied id is kept: 1 to [`MAX_LENGTH`] visible ASCII characters
/// (`!` to `~`, no spaces or control characters), so it is safe in a header and a log line.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LENGTH && id.bytes().all(|byte| byte.is_ascii_graphic())
}

/// A fresh id: a UUID v4 in its hyphenated form.
pub fn generate() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The valid id in `headers`, if there is one.
pub fn from_headers(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(HEADER)?.to_str().ok()?;
    is_valid(value).then(|| value.to_string())
}

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request the current task serves, if it serves one.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `work` with `id` as the current request id (what [`RequestIdLayer`] does; for tests
/// and for work that is not a gRPC call).
pub async fn scope<F: Future>(id: String, work: F) -> F::Output {
    CURRENT.scope(id, work).await
}

/// Adds the current request id, if any, to an outgoing call's metadata.
pub fn attach<T>(request: &mut tonic::Request<T>) {
    let Some(id) = current() else {
        return;
    };
    if let Ok(value) = id.parse() {
        request.metadata_mut().insert(HEADER, value);
    }
}

/// What [`RequestIdLayer`] does with a call that carries no valid id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenMissing {
    Generate,
    Pass,
}

/// A tower layer for a tonic server: gives each call of Quiver's own services (paths
/// under `/quiver.`; health, reflection and `/metrics` are left alone) its request id,
/// a `request` span and the task-local id, and echoes the id in the response headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestIdLayer {
    when_missing: WhenMissing,
}

impl RequestIdLayer {
    /// For the Merger: a call without a valid id gets a generated one.
    pub fn generating() -> RequestIdLayer {
        RequestIdLayer {
            when_missing: WhenMissing::Generate,
        }
    }

    /// For the Searcher: only an id the caller sent is used (calls between Searchers, for
    /// replication, have none).
    pub fn passing() -> RequestIdLayer {
        RequestIdLayer {
            when_missing: WhenMissing::Pass,
        }
    }
}

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService {
            inner,
            when_missing: self.when_missing,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    when_missing: WhenMissing,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>>
    for RequestIdService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        if !path.starts_with("/quiver.") {
            return Box::pin(self.inner.call(request));
        }
        let id = match (from_headers(request.headers()), self.when_missing) {
            (Some(id), _) => id,
            (None, WhenMissing::Generate) => generate(),
            (None, WhenMissing::Pass) => return Box::pin(self.inner.call(request)),
        };
        let method = path.rsplit('/').next().unwrap_or_default().to_string();
        let span = tracing::info_span!("request", request_id = %id, %method);
        let header = http::HeaderValue::from_str(&id).ok();
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(
            CURRENT.scope(
                id,
                async move {
                    let mut response = call.await?;
                    if let Some(header) = header {
                        response.headers_mut().insert(HEADER, header);
                    }
                    Ok(response)
                }
                .instrument(span),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_visible_ascii_ids_are_kept() {
        assert!(is_valid("abc-123_XYZ.~!"));
        assert!(is_valid(&"a".repeat(MAX_LENGTH)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(MAX_LENGTH + 1)));
        assert!(!is_valid("has space"));
        assert!(!is_valid("tab\there"));
        assert!(!is_valid("newline\n"));
        assert!(!is_valid("ünïcode"));
        let generated = generate();
        assert!(is_valid(&generated));
        assert_eq!(generated.len(), 36);
    }

    #[test]
    fn ids_are_read_from_headers_only_when_valid() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        headers.insert(HEADER, http::HeaderValue::from_static("client-7"));
        assert_eq!(from_headers(&headers).as_deref(), Some("client-7"));
        headers.insert(HEADER, http::HeaderValue::from_static("two words"));
        assert_eq!(from_headers(&headers), None);
    }

    #[tokio::test]
    async fn the_current_id_is_attached_to_outgoing_calls() {
        let mut outside = tonic::Request::new(());
        attach(&mut outside);
        assert!(outside.metadata().get(HEADER).is_none());
        assert_eq!(current(), None);
        scope("req-1".to_string(), async {
            assert_eq!(current().as_deref(), Some("req-1"));
            let mut request = tonic::Request::new(());
            attach(&mut request);
            assert_eq!(request.metadata().get(HEADER).unwrap(), "req-1");
        })
        .await;
    }

    #[tokio::test]
    async fn the_layer_generates_or_passes_and_echoes_the_id() {
        use tower::{Layer, Service, ServiceExt};
        let echo = tower::service_fn(|_request: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(current()))
        });
        let call = |layer: RequestIdLayer, path: &str, id: Option<&str>| {
            let mut service = layer.layer(echo);
            let mut request = http::Request::builder().uri(path);
            if let Some(id) = id {
                request = request.header(HEADER, id);
            }
            let request = request.body(()).unwrap();
            async move { service.ready().await.unwrap().call(request).await.unwrap() }
        };

        let response = call(
            RequestIdLayer::generating(),
            "/quiver.v1.Merger/Search",
            Some("mine"),
        )
        .await;
        assert_eq!(response.headers()[HEADER], "mine");
        assert_eq!(response.body().as_deref(), Some("mine"));

        let response = call(
            RequestIdLayer::generating(),
            "/quiver.v1.Merger/Search",
            Some("not valid"),
        )
        .await;
        let generated = response.headers()[HEADER].to_str().unwrap().to_string();
        assert_eq!(generated.len(), 36);
        assert_eq!(response.body().as_deref(), Some(generated.as_str()));

        let response = call(
            RequestIdLayer::passing(),
            "/quiver.v1.Searcher/Search",
            None,
        )
        .await;
        assert!(response.headers().get(HEADER).is_none());
        assert_eq!(response.body(), &None);

        let response = call(RequestIdLayer::generating(), "/metrics", None).await;
        assert!(response.headers().get(HEADER).is_none());
    }
}
