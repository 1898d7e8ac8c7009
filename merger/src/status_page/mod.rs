//! The live status page, served over HTTP/1 on the Merger's gRPC port beside `/metrics`:
//!
//! - `GET /status`: the page (HTML, CSS and JavaScript embedded in the binary; it fetches
//!   nothing from elsewhere). `GET /` redirects there.
//! - `GET /api/status`: one JSON [`snapshot::StatusSnapshot`].
//! - `GET /api/status/events`: Server-Sent Events: a `snapshot` event at once and whenever
//!   the cluster changes (checked on every change of the watched view and every second),
//!   a `heartbeat` event (its data the time) in the seconds nothing changed.
//!
//! The snapshot comes from the Merger's watched cluster view, never a fresh etcd listing;
//! only the controller's two small records (`controller/leader`, `controller/rebalance`),
//! which the view does not follow, are read from etcd, under a deadline, with the last
//! values read kept for when etcd does not answer.

pub mod snapshot;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    http::{header, StatusCode},
    response::{
        sse::{Event, Sse},
        IntoResponse, Redirect, Response,
    },
    routing::get,
};
use futures::Stream;
use quiver_cluster::{
    model::decode, now_rfc3339, ClusterState, ClusterView, KeySchema, MetadataStore,
    DEFAULT_VIRTUAL_NODES,
};
use tokio::sync::watch;

use self::snapshot::{build_snapshot, ControllerRecords, StatusSnapshot};

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// How long one read of the controller's records may take before the last values serve.
const CONTROLLER_READ_DEADLINE: Duration = Duration::from_millis(500);
/// How often an open event stream checks for changes the view does not announce (the
/// controller's records) and sends a heartbeat.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// A burst of view changes (replica status updates, say) costs one snapshot.
const EVENT_MIN_GAP: Duration = Duration::from_millis(200);

/// What the status routes read. Clones share the cache and the stop signal.
#[derive(Clone)]
pub struct StatusPage {
    store: Arc<dyn MetadataStore>,
    schema: KeySchema,
    view: ClusterView,
    /// The controller's records as last read (a plain mutex: never held across an await).
    last_controller: Arc<Mutex<ControllerRecords>>,
    /// Turns true when the server stops, ending the open event streams: an HTTP/1 graceful
    /// shutdown waits for every response to finish, and an event stream never would.
    stopping: watch::Receiver<bool>,
    stop: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for StatusPage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StatusPage")
            .field("schema", &self.schema)
            .finish()
    }
}

impl StatusPage {
    pub fn new(store: Arc<dyn MetadataStore>, schema: KeySchema, view: ClusterView) -> StatusPage {
        let (stop, stopping) = watch::channel(false);
        StatusPage {
            store,
            schema,
            view,
            last_controller: Arc::default(),
            stopping,
            stop: Arc::new(stop),
        }
    }

    /// Adds the status routes to a server's routes (see the [module documentation](self)).
    pub fn routes(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        let json_page = self.clone();
        let events_page = self.clone();
        let router = routes
            .into_axum_router()
            .route("/", get(|| async { Redirect::temporary("/status") }))
            .route("/status", get(|| async { html() }))
            .route("/status/page.css", get(|| async { css() }))
            .route("/status/page.js", get(|| async { javascript() }))
            .route(
                "/api/status",
                get(move || {
                    let page = json_page.clone();
                    async move { page.json().await }
                }),
            )
            .route(
                "/api/status/events",
                get(move || {
                    let page = events_page.clone();
                    async move { Sse::new(page.events()) }
                }),
            );
        tonic::service::Routes::from(router)
    }

    /// Completes with `shutdown`, after ending the open event streams, so a server stopping
    /// on it does not wait on a page left open.
    pub fn ends_streams_on(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> impl std::future::Future<Output = ()> + Send {
        let stop = Arc::clone(&self.stop);
        async move {
            shutdown.await;
            let _ = stop.send(true);
        }
    }

    /// The snapshot now: the view's current state and the controller's records.
    pub async fn snapshot(&self) -> StatusSnapshot {
        let state = self.view.current();
        let controller = self.controller_records().await;
        snapshot_of(&state, &controller)
    }

    async fn json(&self) -> Response {
        let snapshot = self.snapshot().await;
        match serde_json::to_vec(&snapshot) {
            Ok(body) => (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response(),
            Err(error) => {
                tracing::warn!(%error, "could not encode the status snapshot");
                (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
            }
        }
    }

    /// Reads both controller records under [`CONTROLLER_READ_DEADLINE`]; on failure answers
    /// with the last records read and says why.
    async fn controller_records(&self) -> ControllerRecords {
        let leader_key = self.schema.controller_leader();
        let rebalance_key = self.schema.controller_rebalance();
        let reads = async {
            let (leader, rebalance) =
                futures::try_join!(self.store.get(&leader_key), self.store.get(&rebalance_key))?;
            let leader = leader
                .map(|stored| decode(&leader_key, &stored.value))
                .transpose()?;
            let rebalance = rebalance
                .map(|stored| decode(&rebalance_key, &stored.value))
                .transpose()?;
            Ok::<_, quiver_cluster::Error>(ControllerRecords {
                leader,
                rebalance,
                error: None,
            })
        };
        let failure = match tokio::time::timeout(CONTROLLER_READ_DEADLINE, reads).await {
            Ok(Ok(records)) => {
                *self.last_controller.lock().expect("not poisoned") = records.clone();
                return records;
            }
            Ok(Err(error)) => format!("reading the controller's records: {error}"),
            Err(_) => format!(
                "the controller's records did not arrive within {CONTROLLER_READ_DEADLINE:?}"
            ),
        };
        tracing::debug!(error = %failure, "status page shows the last controller records");
        let mut records = self.last_controller.lock().expect("not poisoned").clone();
        records.error = Some(failure);
        records
    }

    /// The event stream of one open page (see the [module documentation](self)).
    fn events(self) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send {
        struct Follow {
            page: StatusPage,
            changes: watch::Receiver<Arc<ClusterState>>,
            view_following: bool,
            last_sent: Option<StatusSnapshot>,
            stopping: watch::Receiver<bool>,
        }
        let follow = Follow {
            changes: self.view.subscribe(),
            view_following: true,
            last_sent: None,
            stopping: self.stopping.clone(),
            page: self,
        };
        futures::stream::unfold(follow, |mut follow| async move {
            if *follow.stopping.borrow() {
                return None;
            }
            if follow.last_sent.is_some() {
                tokio::select! {
                    _ = follow.stopping.changed() => return None,
                    _ = tokio::time::sleep(EVENT_INTERVAL) => {}
                    changed = follow.changes.changed(), if follow.view_following => {
                        if changed.is_err() {
                            follow.view_following = false;
                        }
                        tokio::time::sleep(EVENT_MIN_GAP).await;
                    }
                }
            }
            follow.changes.borrow_and_update();
            let snapshot = follow.page.snapshot().await;
            let unchanged = follow.last_sent.as_ref().is_some_and(|last| {
                StatusSnapshot {
                    generated_at: snapshot.generated_at.clone(),
                    ..last.clone()
                } == snapshot
            });
            let event = if unchanged {
                Event::default()
                    .event("heartbeat")
                    .data(snapshot.generated_at.clone())
            } else {
                match serde_json::to_string(&snapshot) {
                    Ok(json) => Event::default().event("snapshot").data(json),
                    Err(error) => Event::default().event("error").data(error.to_string()),
                }
            };
            if !unchanged {
                follow.last_sent = Some(snapshot);
            }
            Some((Ok(event), follow))
        })
    }
}

fn snapshot_of(state: &ClusterState, controller: &ControllerRecords) -> StatusSnapshot {
    build_snapshot(state, controller, now_rfc3339(), DEFAULT_VIRTUAL_NODES)
}

/// The page loads only its own script and stylesheet; the policy makes sure of it.
fn html() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE_HTML,
    )
}

fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        PAGE_CSS,
    )
}

fn javascript() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        PAGE_JS,
    )
}
