//! Process plumbing shared by the Quiver binaries: logging set-up and the stop signal.

use tracing_subscriber::{fmt, EnvFilter};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("stop signal received");
}

/// Writes `address` to `path` atomically, for scripts and tests waiting on readiness.
pub fn write_ready_file(path: &std::path::Path, address: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{address}\n"))?;
    std::fs::rename(&temporary, path)
}

/// Adds `GET /metrics` (Prometheus text format, the process's default registry) to a gRPC
/// server's routes, so each process exposes its metrics on its gRPC port; the server must
/// accept HTTP/1 for Prometheus to scrape it.
pub fn with_metrics_route(routes: tonic::service::Routes) -> tonic::service::Routes {
    let router = routes
        .into_axum_router()
        .route("/metrics", axum::routing::get(render_metrics));
    tonic::service::Routes::from(router)
}

/// [`with_metrics_route`] plus `GET /live` (200 while the process answers) and `GET /ready`
/// (200 or 503 as `readiness` says), each with a one-line plain-text reason: for curl and
/// for HTTP probes, next to the gRPC health service that says the same.
pub fn with_http_routes(
    routes: tonic::service::Routes,
    readiness: Readiness,
) -> tonic::service::Routes {
    let router = with_metrics_route(routes)
        .into_axum_router()
        .route("/live", axum::routing::get(|| async { "live\n" }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let (ready, reason) = readiness.get();
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, format!("ready: {reason}\n"))
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {reason}\n"),
                        )
                    }
                }
            }),
        );
    tonic::service::Routes::from(router)
}

/// Whether a process should get traffic, and why (not). Every change is mirrored into the
/// standard gRPC health service under the process's service name (what Kubernetes' gRPC
/// probes ask) and served at `GET /ready` (see [`with_http_routes`]). The empty service
/// name `""` is left SERVING for liveness.
#[derive(Clone)]
pub struct Readiness {
    inner: std::sync::Arc<ReadinessInner>,
}

struct ReadinessInner {
    state: std::sync::Mutex<(bool, String)>,
    health: tonic_health::server::HealthReporter,
    service_name: String,
}

impl Readiness {
    /// Starts not ready with `reason`, and says so to the health service.
    pub async fn new(
        health: tonic_health::server::HealthReporter,
        service_name: &str,
        reason: &str,
    ) -> Readiness {
        health
            .set_service_status(service_name, tonic_health::ServingStatus::NotServing)
            .await;
        Readiness {
            inner: std::sync::Arc::new(ReadinessInner {
                state: std::sync::Mutex::new((false, reason.to_string())),
                health,
                service_name: service_name.to_string(),
            }),
        }
    }

    /// Whether it is ready, and why (not).
    pub fn get(&self) -> (bool, String) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records the new readiness; a change of ready/not ready is logged and sent to the
    /// health service, a change of reason alone only updates `/ready`.
    pub async fn set(&self, ready: bool, reason: impl Into<String>) {
        let reason = reason.into();
        let flipped = {
            let mut state = self
                .inner
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let flipped = state.0 != ready;
            *state = (ready, reason.clone());
            flipped
        };
        if !flipped {
            return;
        }
        let status = if ready {
            tracing::info!(service = %self.inner.service_name, %reason, "ready");
            tonic_health::ServingStatus::Serving
        } else {
            tracing::info!(service = %self.inner.service_name, %reason, "not ready");
            tonic_health::ServingStatus::NotServing
        };
        self.inner
            .health
            .set_service_status(&self.inner.service_name, status)
            .await;
    }
}

async fn render_metrics() -> impl axum::response::IntoResponse {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    if let Err(error) = encoder.encode(&prometheus::gather(), &mut body) {
        tracing::warn!(%error, "could not encode metrics");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus::TEXT_FORMAT.to_string(),
        )],
        body,
    )
}

/// Per-method request count and latency of one service, both by final gRPC code, recorded
/// by its gRPC adapter around every call.
pub struct RequestMetrics {
    requests: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
}

impl RequestMetrics {
    /// Registers `quiver_<service>_requests_total{method,code}` and
    /// `quiver_<service>_request_duration_seconds{method,code}` in the default registry,
    /// with the `OK` series of every method in `methods` present (at zero) from the start.
    pub fn register(service: &str, buckets: Vec<f64>, methods: &[&str]) -> RequestMetrics {
        let requests = prometheus::register_int_counter_vec!(
            format!("quiver_{service}_requests_total"),
            format!("{service} gRPC requests served, by method and final gRPC code."),
            &["method", "code"]
        )
        .expect("request metrics register once per service");
        let seconds = prometheus::register_histogram_vec!(
            format!("quiver_{service}_request_duration_seconds"),
            format!(
                "{service} gRPC request latency in seconds, from the call reaching the \
                 service to its answer, by method and final gRPC code."
            ),
            &["method", "code"],
            buckets
        )
        .expect("request metrics register once per service");
        for method in methods {
            requests.with_label_values(&[method, "OK"]);
            seconds.with_label_values(&[method, "OK"]);
        }
        RequestMetrics { requests, seconds }
    }

    /// Records the call that started at `started` and passes its result through.
    pub fn observe<T>(
        &self,
        method: &str,
        started: std::time::Instant,
        result: Result<T, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        let code = quiver_proto::code_name(code);
        let elapsed = started.elapsed();
        self.requests.with_label_values(&[method, code]).inc();
        self.seconds
            .with_label_values(&[method, code])
            .observe(elapsed.as_secs_f64());
        tracing::debug!(
            method,
            code,
            latency_us = elapsed.as_micros() as u64,
            "request served"
        );
        result
    }
}
