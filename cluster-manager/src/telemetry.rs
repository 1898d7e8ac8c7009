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

/// Per-method request count (by final gRPC code) and latency of one service, recorded by
/// its gRPC adapter around every call.
pub struct RequestMetrics {
    requests: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
}

impl RequestMetrics {
    /// Registers `quiver_<service>_requests_total{method,code}` and
    /// `quiver_<service>_request_duration_seconds{method}` in the default registry.
    pub fn register(service: &str, buckets: Vec<f64>) -> RequestMetrics {
        let requests = prometheus::register_int_counter_vec!(
            format!("quiver_{service}_requests_total"),
            format!("{service} requests by method and gRPC code."),
            &["method", "code"]
        )
        .expect("request metrics register once per service");
        let seconds = prometheus::register_histogram_vec!(
            format!("quiver_{service}_request_duration_seconds"),
            format!("{service} request latency by method."),
            &["method"],
            buckets
        )
        .expect("request metrics register once per service");
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
        self.requests
            .with_label_values(&[method, quiver_proto::code_name(code)])
            .inc();
        self.seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}
