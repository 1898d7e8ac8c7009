//! The live status page, served over HTTP/1 on the Merger's gRPC port beside `/metrics`:
//!
//! - `GET /status`: the page (HTML, CSS and JavaScript embedded in the binary; it fetches
//!   nothing from elsewhere). `GET /` redirects there.
//! - `GET /api/status`: one JSON [`snapshot::StatusSnapshot`].
//! - `GET /api/status/events`: Server-Sent Events: a `snapshot` event at once and whenever
//!   the cluster changes (checked on every change of the watched view and every second),
//!   a `heartbeat` event (its data the time) in the seconds nothing changed.
//!
//! Until the Merger has loaded the cluster state, `/api/status` answers 503 and the event
//! stream sends only heartbeats.
//!
//! The snapshot comes from the Merger's watched cluster view, never a fresh etcd listing;
//! only the controller's two small records (`controller/leader`, `controller/rebalance`),
//! which the view does not follow, are read from etcd, under a deadline, with the last
//! values read kept for when etcd does not answer.

pub mod snapshot;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
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
/// Controller records read this recently are reused instead of read again.
const CONTROLLER_FRESH_FOR: Duration = Duration::from_millis(900);
/// How often an open event stream checks for changes the view does not announce (the
/// controller's records) and sends a heartbeat.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// A burst of view changes (replica status updates, say) costs one snapshot.
const EVENT_MIN_GAP: Duration = Duration::from_millis(200);

/// Where the snapshot comes from, once the Merger has it.
struct Source {
    store: Arc<dyn MetadataStore>,
    schema: KeySchema,
    view: ClusterView,
}

/// What the status routes read. Clones share the source, the cache and the stop signal.
#[derive(Clone)]
pub struct StatusPage {
    /// Set once the Merger has loaded the cluster state; the routes exist before that.
    source: Arc<OnceLock<Source>>,
    /// The controller's records as last read successfully, and when (a plain mutex: never
    /// held across an await). Shared by every open page, so they cost etcd one read per
    /// [`CONTROLLER_FRESH_FOR`] however many pages are open.
    last_controller: Arc<Mutex<(Option<Instant>, ControllerRecords)>>,
    /// Turns true when the server stops, ending the open event streams: an HTTP/1 graceful
    /// shutdown waits for every response to finish, and an event stream never would.
    stopping: watch::Receiver<bool>,
    stop: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for StatusPage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StatusPage")
            .field("following", &self.source.get().is_some())
            .finish()
    }
}

impl StatusPage {
    /// A page with no cluster state yet; see [`StatusPage::follow`].
    pub fn new() -> StatusPage {
        let (stop, stopping) = watch::channel(false);
        StatusPage {
            source: Arc::default(),
            last_controller: Arc::default(),
            stopping,
            stop: Arc::new(stop),
        }
    }

    /// Shows `view` (and the controller's records read from `store`) from now on. Only the
    /// first call counts: a Merger loads its cluster state once.
    pub fn follow(&self, store: Arc<dyn MetadataStore>, schema: KeySchema, view: ClusterView) {
        let _ = self.source.set(Source {
            store,
            schema,
            view,
        });
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

    /// The snapshot now: the view's current state and the controller's records; `None`
    /// until the Merger has the cluster state.
    pub async fn snapshot(&self) -> Option<StatusSnapshot> {
        let source = self.source.get()?;
        let state = source.view.current();
        let controller = self.controller_records(source).await;
        Some(snapshot_of(&state, &controller))
    }

    async fn json(&self) -> Response {
        let Some(snapshot) = self.snapshot().await else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CACHE_CONTROL, "no-store")],
                "no cluster state from etcd yet\n",
            )
                .into_response();
        };
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

    /// Reads both controller records under [`CONTROLLER_READ_DEADLINE`], unless a read
    /// within [`CONTROLLER_FRESH_FOR`] has them; on failure answers with the last records
    /// read and says why.
    async fn controller_records(&self, source: &Source) -> ControllerRecords {
        {
            let last = self.last_controller.lock().expect("not poisoned");
            if last
                .0
                .is_some_and(|read_at| read_at.elapsed() < CONTROLLER_FRESH_FOR)
            {
                return last.1.clone();
            }
        }
        let leader_key = source.schema.controller_leader();
        let rebalance_key = source.schema.controller_rebalance();
        let reads = async {
            let (leader, rebalance) = futures::try_join!(
                source.store.get(&leader_key),
                source.store.get(&rebalance_key)
            )?;
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
                *self.last_controller.lock().expect("not poisoned") =
                    (Some(Instant::now()), records.clone());
                return records;
            }
            Ok(Err(error)) => format!("reading the controller's records: {error}"),
            Err(_) => format!(
                "the controller's records did not arrive within {CONTROLLER_READ_DEADLINE:?}"
            ),
        };
        tracing::debug!(error = %failure, "status page shows the last controller records");
        let mut records = self.last_controller.lock().expect("not poisoned").1.clone();
        records.error = Some(failure);
        records
    }

    /// The event stream of one open page (see the [module documentation](self)).
    fn events(self) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send {
        struct Follow {
            page: StatusPage,
            /// The view's changes, once the Merger has a view.
            changes: Option<watch::Receiver<Arc<ClusterState>>>,
            view_following: bool,
            /// Something was sent already, so the next event waits for a change or a tick.
            started: bool,
            last_sent: Option<StatusSnapshot>,
            stopping: watch::Receiver<bool>,
        }
        let follow = Follow {
            changes: None,
            view_following: true,
            started: false,
            last_sent: None,
            stopping: self.stopping.clone(),
            page: self,
        };
        futures::stream::unfold(follow, |mut follow| async move {
            if *follow.stopping.borrow() {
                return None;
            }
            if follow.started {
                let Follow {
                    changes,
                    view_following,
                    stopping,
                    ..
                } = &mut follow;
                let change = async {
                    match changes.as_mut() {
                        Some(changes) if *view_following => changes.changed().await.is_ok(),
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stopping.changed() => return None,
                    _ = tokio::time::sleep(EVENT_INTERVAL) => {}
                    still_following = change => {
                        *view_following = still_following;
                        tokio::time::sleep(EVENT_MIN_GAP).await;
                    }
                }
            }
            follow.started = true;
            if follow.changes.is_none() {
                follow.changes = follow
                    .page
                    .source
                    .get()
                    .map(|source| source.view.subscribe());
            }
            if let Some(changes) = follow.changes.as_mut() {
                changes.borrow_and_update();
            }
            let Some(snapshot) = follow.page.snapshot().await else {
                let waiting = Event::default().event("heartbeat").data(now_rfc3339());
                return Some((Ok(waiting), follow));
            };
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

impl Default for StatusPage {
    fn default() -> StatusPage {
        StatusPage::new()
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn before_the_cluster_state_the_snapshot_is_unavailable_and_the_stream_waits() {
        let page = StatusPage::new();
        assert!(page.snapshot().await.is_none());
        assert_eq!(page.json().await.status(), StatusCode::SERVICE_UNAVAILABLE);

        // The first event comes at once, a heartbeat; the stream ends when the server stops.
        let mut events = Box::pin(page.clone().events());
        let first = tokio::time::timeout(Duration::from_millis(500), events.next())
            .await
            .expect("the first event is sent at once");
        assert!(matches!(first, Some(Ok(_))));
        page.ends_streams_on(async {}).await;
        let last = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .expect("the stream ends once the server stops");
        assert!(last.is_none());
    }
}
