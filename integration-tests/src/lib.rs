//! A real Quiver cluster for tests: a real etcd on free ports and real `quiver-searcher` and
//! `quiver-merger` processes on 127.0.0.1, each started on port 0 and awaited through its
//! ready file (no pick-a-port race, no blind sleeps). Everything is killed on drop.
//!
//! The binaries come from the target directory the tests were built in (`target/`, or
//! `$CARGO_TARGET_DIR`): `scripts/test.sh` builds them before running the tests.
//!
//! [`ClusterOptions`] starts Searchers and the Merger with extra flags (say, the Searcher's
//! test-only fault injection, or the Merger's hedging off) and extra environment variables
//! (say, `RUST_LOG`); [`Cluster::start_merger`] adds
//! another Merger with its own flags to a running cluster.
//!
//! For durability and rebalancing tests: [`Cluster::add_searcher`] grows a running cluster,
//! [`SearcherProcess::client`], [`SearcherProcess::replica_get`] and
//! [`SearcherProcess::replica_status`] look at one replica directly (not through a Merger),
//! [`Cluster::wait_caught_up`] waits until every replica of a collection has applied what its
//! primary has, [`Cluster::etcd_json`] reads one record, [`Cluster::etcd_stop`] and
//! [`Cluster::etcd_restart`] take etcd away and bring it back, [`Cluster::quiverctl`] runs the
//! admin CLI, and [`Cluster::log_path`] / [`Cluster::log_text`] give a process's log.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use quiver_cluster::testing::EtcdServer;
use quiver_proto::v1::{
    merger_client::MergerClient, searcher_client::SearcherClient, CollectionConfig,
    CreateCollectionRequest, HostedReplica, Metric, Point, ReplicaGetRequest, ReplicaRole,
    ReplicaState, ReplicaStatusRequest, UpsertRequest,
};
use tempfile::TempDir;
use tonic::transport::Channel;

/// Where a binary of this workspace was built, next to the test executable's `deps/`.
pub fn binary(name: &str) -> PathBuf {
    let test_executable = std::env::current_exe().expect("test executable path");
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does this)",
        path.display()
    );
    path
}

/// `../shared/data/<name>` beside the repository, if present.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(name);
    path.exists().then_some(path)
}

pub struct SearcherProcess {
    pub id: String,
    pub address: String,
    pub data_dir: PathBuf,
    /// The extra flags it was started with (kept for restarts).
    pub args: Vec<String>,
    child: Option<Child>,
}

impl SearcherProcess {
    /// SIGKILL: no graceful stop, no lease revocation.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = self.terminate(Duration::from_secs(15));
    }

    /// SIGTERM, then wait up to `timeout`: see [`terminate_child`].
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        terminate_child(self.child.take()?, timeout)
    }

    /// Whether this handle still owns a process (it was not killed or stopped through it).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How the process ended, if it exited by itself (a crash, say); `None` while it runs or
    /// when it was already killed or stopped through this handle.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// A direct client of this Searcher's internal gRPC service (`Get`, `ReplicaStatus`, …),
    /// to look at one replica rather than at what the Merger makes of them all.
    pub async fn client(&self) -> Result<SearcherClient<Channel>, tonic::transport::Error> {
        connect_searcher(&self.address).await
    }

    /// The replicas this Searcher hosts (of `collection`, or all when it is empty), as its
    /// `ReplicaStatus` reports them.
    pub async fn replica_status(&self, collection: &str) -> Result<Vec<HostedReplica>, String> {
        let mut client = self
            .client()
            .await
            .map_err(|error| format!("{}: cannot connect: {error}", self.id))?;
        client
            .replica_status(ReplicaStatusRequest {
                collection: collection.to_string(),
            })
            .await
            .map(|response| response.into_inner().replicas)
            .map_err(|status| format!("{}: ReplicaStatus failed: {status:?}", self.id))
    }

    /// Reads points straight from this Searcher's replica of one shard (vectors and
    /// payloads included).
    pub async fn replica_get(
        &self,
        collection: &str,
        shard: u32,
        ids: &[String],
    ) -> Result<Vec<Point>, tonic::Status> {
        let mut client = self.client().await.map_err(|error| {
            tonic::Status::unavailable(format!("{}: cannot connect: {error}", self.id))
        })?;
        client
            .get(ReplicaGetRequest {
                collection: collection.to_string(),
                shard,
                ids: ids.to_vec(),
                with_vectors: true,
                with_payloads: true,
            })
            .await
            .map(|response| response.into_inner().points)
    }
}

impl Drop for SearcherProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Merger process beside the cluster's own (see [`Cluster::start_merger`]); killed on drop.
pub struct MergerProcess {
    pub name: String,
    pub address: String,
    child: Option<Child>,
}

impl MergerProcess {
    pub async fn client(&self) -> MergerClient<Channel> {
        connect_merger(&self.address).await
    }

    /// SIGTERM, then wait up to `timeout`: see [`terminate_child`].
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        terminate_child(self.child.take()?, timeout)
    }
}

/// SIGTERM, then wait up to `timeout` for the process to exit by itself and return how it
/// exited; `None` when it was still running at the deadline (it is then SIGKILLed, so a
/// drain that hangs fails the test instead of leaking a process).
fn terminate_child(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for MergerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What [`Cluster::start_with`] starts.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub searchers: usize,
    pub lease_ttl_secs: u64,
    /// Extra flags for Searcher `i` (`searcher-{i + 1}`); Searchers past the end get none.
    pub searcher_args: Vec<Vec<String>>,
    /// Extra flags for the Merger.
    pub merger_args: Vec<String>,
    /// Extra environment variables for every process of the cluster (say, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// The Searchers' ids; `searcher-1`, `searcher-2`, … past the end.
    pub searcher_ids: Vec<String>,
}

impl ClusterOptions {
    pub fn new(searchers: usize, lease_ttl_secs: u64) -> ClusterOptions {
        ClusterOptions {
            searchers,
            lease_ttl_secs,
            searcher_args: Vec::new(),
            merger_args: Vec::new(),
            env: Vec::new(),
            searcher_ids: Vec::new(),
        }
    }

    /// Names the Searchers (the first `ids.len()` of them).
    pub fn searcher_ids(mut self, ids: &[&str]) -> ClusterOptions {
        self.searcher_ids = ids.iter().map(|id| id.to_string()).collect();
        self
    }

    /// An environment variable for every process of the cluster, the ones added later
    /// included.
    pub fn env(mut self, key: &str, value: &str) -> ClusterOptions {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Extra flags for the Searcher at `index`.
    pub fn searcher_args(mut self, index: usize, args: &[&str]) -> ClusterOptions {
        if self.searcher_args.len() <= index {
            self.searcher_args.resize(index + 1, Vec::new());
        }
        self.searcher_args[index] = args.iter().map(|arg| arg.to_string()).collect();
        self
    }

    pub fn merger_args(mut self, args: &[&str]) -> ClusterOptions {
        self.merger_args = args.iter().map(|arg| arg.to_string()).collect();
        self
    }
}

pub struct Cluster {
    pub etcd: EtcdServer,
    pub searchers: Vec<SearcherProcess>,
    pub merger_address: String,
    pub lease_ttl_secs: u64,
    merger: Option<MergerProcess>,
    work: TempDir,
    /// [`ClusterOptions::env`].
    env: Vec<(String, String)>,
}

impl Cluster {
    /// etcd, `searchers` Searchers (ids `searcher-1`…) and one Merger.
    pub async fn start(searchers: usize, lease_ttl_secs: u64) -> Cluster {
        Cluster::start_with(ClusterOptions::new(searchers, lease_ttl_secs)).await
    }

    /// etcd, Searchers and one Merger, with the extra flags `options` gives.
    pub async fn start_with(options: ClusterOptions) -> Cluster {
        let etcd = EtcdServer::start().expect("start etcd (scripts/test.sh installs it)");
        let work = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            etcd,
            searchers: Vec::new(),
            merger_address: String::new(),
            lease_ttl_secs: options.lease_ttl_secs,
            merger: None,
            work,
            env: options.env.clone(),
        };
        for index in 0..options.searchers {
            let args = options
                .searcher_args
                .get(index)
                .cloned()
                .unwrap_or_default();
            let id = options
                .searcher_ids
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("searcher-{}", index + 1));
            let searcher = cluster.spawn_searcher(&id, args);
            cluster.searchers.push(searcher);
        }
        for searcher in &mut cluster.searchers {
            searcher.address = wait_ready(
                &ready_file(cluster.work.path(), &searcher.id),
                &searcher.id,
                searcher.child.as_mut(),
            );
        }
        let args: Vec<&str> = options.merger_args.iter().map(String::as_str).collect();
        let merger = cluster.start_merger("merger", &args);
        cluster.merger_address = merger.address.clone();
        cluster.merger = Some(merger);
        cluster
    }

    /// Starts a Merger named `name` (its log is `<name>.log`) on this cluster's etcd, with
    /// extra flags, and waits until it serves.
    pub fn start_merger(&self, name: &str, args: &[&str]) -> MergerProcess {
        let ready = ready_file(self.work.path(), name);
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(binary("quiver-merger"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--etcd-endpoints",
                &self.etcd.endpoint,
            ])
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log_file(self.work.path(), name))
            .spawn()
            .expect("spawn quiver-merger");
        let mut merger = MergerProcess {
            name: name.to_string(),
            address: String::new(),
            child: Some(child),
        };
        merger.address = wait_ready(&ready, name, merger.child.as_mut());
        merger
    }

    fn spawn_searcher(&self, id: &str, args: Vec<String>) -> SearcherProcess {
        let data_dir = self.work.path().join(id);
        let ready = ready_file(self.work.path(), id);
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(binary("quiver-searcher"))
            .args(["--id", id, "--listen", "127.0.0.1:0"])
            .args(["--etcd-endpoints", &self.etcd.endpoint])
            .args(["--lease-ttl-secs", &self.lease_ttl_secs.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .args(&args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log_file(self.work.path(), id))
            .spawn()
            .expect("spawn quiver-searcher");
        SearcherProcess {
            id: id.to_string(),
            address: String::new(),
            data_dir,
            args,
            child: Some(child),
        }
    }

    /// Starts the Searcher at `index` again with the same id, data directory and flags.
    pub fn restart_searcher(&mut self, index: usize) {
        let id = self.searchers[index].id.clone();
        let args = self.searchers[index].args.clone();
        self.searchers[index].kill();
        let mut searcher = self.spawn_searcher(&id, args);
        searcher.address = wait_ready(
            &ready_file(self.work.path(), &id),
            &id,
            searcher.child.as_mut(),
        );
        self.searchers[index] = searcher;
    }

    /// Starts one more Searcher on the running cluster, `searcher-<N>` with N one past the
    /// Searchers started so far, with `args` as extra flags; waits until it is ready (it
    /// registered in etcd and serves) and returns its index in [`Cluster::searchers`].
    pub fn add_searcher(&mut self, args: &[&str]) -> usize {
        let id = format!("searcher-{}", self.searchers.len() + 1);
        let args = args.iter().map(|arg| arg.to_string()).collect();
        let mut searcher = self.spawn_searcher(&id, args);
        searcher.address = wait_ready(
            &ready_file(self.work.path(), &id),
            &id,
            searcher.child.as_mut(),
        );
        self.searchers.push(searcher);
        self.searchers.len() - 1
    }

    /// The index in [`Cluster::searchers`] of the Searcher with this id.
    pub fn searcher_index(&self, id: &str) -> usize {
        self.searchers
            .iter()
            .position(|searcher| searcher.id == id)
            .unwrap_or_else(|| panic!("no searcher {id} in this cluster"))
    }

    /// The data directory of the Searcher at `index` (kept across restarts).
    pub fn searcher_data_dir(&self, index: usize) -> &Path {
        &self.searchers[index].data_dir
    }

    /// Where a process of this cluster (`searcher-2`, `merger`, …) writes its log (stderr);
    /// a restart starts the file anew.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.work.path().join(format!("{name}.log"))
    }

    /// The whole log of a process of this cluster ("" before it wrote any).
    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    pub async fn client(&self) -> MergerClient<Channel> {
        connect_merger(&self.merger_address).await
    }

    /// Kills etcd, keeping its data (see [`EtcdServer::stop`]).
    pub fn etcd_stop(&mut self) {
        self.etcd.stop();
    }

    /// Starts etcd again on the same port with the same data (see [`EtcdServer::restart`]);
    /// returns once it answers.
    pub fn etcd_restart(&mut self) {
        self.etcd.restart().expect("restart etcd");
    }

    /// The JSON value stored at `key`, read with etcdctl; `None` when the key is absent.
    /// Panics when the value is not JSON, naming the key.
    pub fn etcd_json(&self, key: &str) -> Option<serde_json::Value> {
        let text = self.etcdctl(&["get", key, "--print-value-only"]);
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(
            serde_json::from_str(text)
                .unwrap_or_else(|error| panic!("{key} holds no JSON ({error}): {text}")),
        )
    }

    /// Runs the real `quiverctl` with `args` against this cluster (its Merger through
    /// `--merger`, its etcd through `QUIVER_ETCD_ENDPOINTS`) and returns what it did; the
    /// caller asserts on the exit status and output.
    pub fn quiverctl(&self, args: &[&str]) -> Output {
        Command::new(binary("quiverctl"))
            .arg("--merger")
            .arg(&self.merger_address)
            .args(args)
            .env("QUIVER_ETCD_ENDPOINTS", &self.etcd.endpoint)
            .env_remove("QUIVER_OUTPUT")
            .stdin(Stdio::null())
            .output()
            .expect("run quiverctl")
    }

    /// Waits until every replica of `collection` that a running Searcher hosts is ACTIVE and
    /// has applied exactly what its shard's primary has (same `applied_seq`, same epoch),
    /// each shard has exactly one PRIMARY — the one its etcd assignment names — and at least
    /// `replicas_per_shard` such replicas, as each Searcher's own `ReplicaStatus` reports.
    /// Returns, per shard, `(searcher id, replica)` for every replica, the primary first.
    /// Panics after `timeout`, saying which replica was behind and by how much.
    pub async fn wait_caught_up(
        &self,
        collection: &str,
        replicas_per_shard: usize,
        timeout: Duration,
    ) -> BTreeMap<u32, Vec<(String, HostedReplica)>> {
        wait_for(
            timeout,
            &format!("every replica of {collection} to catch up with its primary"),
            async || self.caught_up(collection, replicas_per_shard).await,
        )
        .await
    }

    async fn caught_up(
        &self,
        collection: &str,
        replicas_per_shard: usize,
    ) -> Result<BTreeMap<u32, Vec<(String, HostedReplica)>>, String> {
        let record = self
            .etcd_json(&format!("/quiver/collections/{collection}"))
            .ok_or_else(|| format!("no collection {collection} in etcd"))?;
        let num_shards = record["num_shards"]
            .as_u64()
            .ok_or_else(|| format!("collection record without num_shards: {record}"))?
            as u32;
        let mut shards: BTreeMap<u32, Vec<(String, HostedReplica)>> =
            (0..num_shards).map(|shard| (shard, Vec::new())).collect();
        for searcher in self
            .searchers
            .iter()
            .filter(|searcher| searcher.is_running())
        {
            for replica in searcher.replica_status(collection).await? {
                shards
                    .entry(replica.shard)
                    .or_default()
                    .push((searcher.id.clone(), replica));
            }
        }
        for (shard, replicas) in &mut shards {
            let assignment = self
                .etcd_json(&format!("/quiver/assignments/{collection}/{shard}"))
                .ok_or_else(|| format!("no assignment for shard {shard}"))?;
            let assigned_primary = assignment["primary"].as_str().unwrap_or_default();
            let primaries: Vec<&String> = replicas
                .iter()
                .filter(|(_, replica)| replica.role == ReplicaRole::Primary as i32)
                .map(|(id, _)| id)
                .collect();
            if primaries.len() != 1 || primaries[0] != assigned_primary {
                return Err(format!(
                    "shard {shard}: replicas reporting PRIMARY {primaries:?}, assignment {assignment}"
                ));
            }
            replicas.sort_by_key(|(id, replica)| {
                (replica.role != ReplicaRole::Primary as i32, id.clone())
            });
            let (_, primary) = &replicas[0];
            let (primary_seq, primary_epoch) = (primary.applied_seq, primary.epoch);
            for (id, replica) in replicas.iter() {
                if replica.state != ReplicaState::Active as i32
                    || replica.applied_seq != primary_seq
                    || replica.epoch != primary_epoch
                {
                    return Err(format!(
                        "shard {shard}: {id} is {:?} at seq {} epoch {} ({:?}); primary {assigned_primary} at seq {primary_seq} epoch {primary_epoch}",
                        ReplicaState::try_from(replica.state).unwrap_or(ReplicaState::Unspecified),
                        replica.applied_seq,
                        replica.epoch,
                        ReplicaRole::try_from(replica.role).unwrap_or(ReplicaRole::Unspecified),
                    ));
                }
            }
            if replicas.len() < replicas_per_shard {
                return Err(format!(
                    "shard {shard}: {} replicas on running searchers ({:?}), want {replicas_per_shard}",
                    replicas.len(),
                    replicas.iter().map(|(id, _)| id).collect::<Vec<_>>()
                ));
            }
        }
        Ok(shards)
    }

    /// Runs the real `etcdctl` against this cluster's etcd and returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.etcd.endpoint)
            .args(args)
            .output()
            .expect("run etcdctl (scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("etcdctl prints UTF-8")
    }

    /// Keys under `prefix`, read with etcdctl.
    pub fn etcd_keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The tail of a process's log, for assertion messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.work.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.merger.take());
        for searcher in &mut self.searchers {
            searcher.kill();
        }
    }
}

/// A client of the Merger at `address` with generous limits.
pub async fn connect_merger(address: &str) -> MergerClient<Channel> {
    let channel = Channel::from_shared(address.to_string())
        .expect("merger address")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .connect()
        .await
        .expect("connect to merger");
    MergerClient::new(channel)
        .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
}

/// A client of the Searcher at `address` (`http://host:port`, or bare `host:port`).
pub async fn connect_searcher(
    address: &str,
) -> Result<SearcherClient<Channel>, tonic::transport::Error> {
    let address = if address.starts_with("http://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let channel = Channel::from_shared(address)
        .expect("searcher address")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    Ok(SearcherClient::new(channel)
        .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES))
}

/// The value of an unlabelled Prometheus counter or gauge that the service at `address`
/// serves at `/metrics` (0 when it has not been touched yet).
pub fn metric_value(address: &str, name: &str) -> f64 {
    let (status, body) = http_get(address, "/metrics");
    assert!(status.contains("200"), "GET /metrics answered {status}");
    body.lines()
        .filter_map(|line| line.strip_prefix(name))
        .find_map(|rest| rest.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a metric value"))
        .unwrap_or(0.0)
}

fn ready_file(work: &Path, name: &str) -> PathBuf {
    work.join(format!("{name}.ready"))
}

fn log_file(work: &Path, name: &str) -> Stdio {
    std::fs::File::create(work.join(format!("{name}.log")))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Waits for a process's ready file and returns what it holds (the address it serves on);
/// fails at once, with its log, when the process exits first (a flag it does not know, say).
fn wait_ready(path: &Path, what: &str, mut child: Option<&mut Child>) -> String {
    let log = path.with_extension("log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text.trim().to_string();
            }
        }
        if let Some(status) = child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
        {
            panic!(
                "{what} exited ({status}) before becoming ready; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{what} did not become ready within 30s; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` until it returns `Ok` or `timeout` passes; then panics with `what` and the
/// last `Err` it gave, so a failure says what was seen, not only what was awaited.
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn collection_config(
    name: &str,
    dimension: u32,
    metric: Metric,
    shards: u32,
    replication_factor: u32,
) -> CreateCollectionRequest {
    CreateCollectionRequest {
        config: Some(CollectionConfig {
            name: name.to_string(),
            dimension,
            metric: metric as i32,
            num_shards: shards,
            replication_factor,
            index_spec: "flat".into(),
            payload_indexes: Vec::new(),
        }),
    }
}

/// The exact top k of `query` over the rows of `base` that `keep(row)` admits (ids are row
/// numbers), ties broken by id as the API orders them.
pub fn brute_force(
    metric: quiver_index::Metric,
    base: &quiver_index::dataset::Vectors,
    query: &[f32],
    k: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<(String, f32)> {
    use quiver_index::{normalize_in_place, Metric};
    let mut query = query.to_vec();
    if metric == Metric::Cosine {
        normalize_in_place(&mut query);
    }
    let mut scored: Vec<(String, f32)> = base
        .rows()
        .enumerate()
        .filter(|(row, _)| keep(*row))
        .map(|(row, vector)| {
            let mut vector = vector.to_vec();
            if metric == Metric::Cosine {
                normalize_in_place(&mut vector);
            }
            (row.to_string(), metric.score(&query, &vector))
        })
        .collect();
    scored.sort_by(|left, right| {
        metric
            .compare_scores(left.1, right.1)
            .then_with(|| left.0.cmp(&right.0))
    });
    scored.truncate(k);
    scored
}

/// Asserts that `found` has brute force's ids in its order, and its scores up to float
/// rounding (the index sums in another order than [`brute_force`]).
pub fn assert_same_results(found: &[(String, f32)], expected: &[(String, f32)], what: &str) {
    let found_ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
    let expected_ids: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        found_ids, expected_ids,
        "{what}: ids differ from brute force"
    );
    for ((_, found_score), (_, expected_score)) in found.iter().zip(expected) {
        let tolerance = 1e-5 * expected_score.abs().max(1.0);
        assert!(
            (found_score - expected_score).abs() <= tolerance,
            "{what}: score {found_score} vs brute force {expected_score}"
        );
    }
}

/// (id, score) of every neighbour of one query's result.
pub fn id_scores(result: &quiver_proto::v1::QueryResult) -> Vec<(String, f32)> {
    result
        .neighbors
        .iter()
        .map(|neighbor| (neighbor.id.clone(), neighbor.score))
        .collect()
}

/// A search for one query vector.
pub fn search_request(collection: &str, query: &[f32], k: u32) -> quiver_proto::v1::SearchRequest {
    quiver_proto::v1::SearchRequest {
        collection: collection.to_string(),
        queries: vec![quiver_proto::v1::Vector {
            values: query.to_vec(),
        }],
        k,
        ..quiver_proto::v1::SearchRequest::default()
    }
}

/// Each query's answer through the cluster, checked against brute force, to compare later
/// answers with exactly (replicas hold the same data and compute the same floats).
pub async fn reference_results(
    client: &mut MergerClient<Channel>,
    collection: &str,
    base: &quiver_index::dataset::Vectors,
    queries: &quiver_index::dataset::Vectors,
    k: u32,
) -> Vec<quiver_proto::v1::QueryResult> {
    let mut results = Vec::new();
    for row in 0..queries.len() {
        let response = client
            .search(search_request(collection, queries.row(row), k))
            .await
            .expect("reference search")
            .into_inner();
        assert!(!response.partial);
        let result = response.results.into_iter().next().unwrap();
        let expected = brute_force(
            quiver_index::Metric::L2,
            base,
            queries.row(row),
            k as usize,
            |_| true,
        );
        assert_same_results(&id_scores(&result), &expected, &format!("query {row}"));
        results.push(result);
    }
    results
}

/// Upserts every row of `vectors` with its row number as id, in batches.
pub async fn upsert_rows(
    client: &mut MergerClient<Channel>,
    collection: &str,
    vectors: &quiver_index::dataset::Vectors,
    batch: usize,
) {
    let rows: Vec<usize> = (0..vectors.len()).collect();
    for chunk in rows.chunks(batch) {
        let points = chunk
            .iter()
            .map(|row| Point {
                id: row.to_string(),
                vector: vectors.row(*row).to_vec(),
                payload_json: format!(r#"{{"row":{row}}}"#),
            })
            .collect();
        upsert_points(client, collection, points).await;
    }
}

/// Upserts `points` through the Merger; every one must be upserted with no replica failing.
pub async fn upsert_points(
    client: &mut MergerClient<Channel>,
    collection: &str,
    points: Vec<Point>,
) -> quiver_proto::v1::UpsertResponse {
    let count = points.len();
    let response = client
        .upsert(UpsertRequest {
            collection: collection.to_string(),
            points,
            ..Default::default()
        })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(response.upserted as usize, count);
    assert!(
        response.failed_replicas.is_empty(),
        "replicas failed: {:?}",
        response.failed_replicas
    );
    response
}

/// A plain HTTP/1.1 GET, as Prometheus scrapes: returns (status line, body).
pub fn http_get(address: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect for HTTP GET");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send HTTP request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// Searches without pause from background tasks, each answer compared exactly with a
/// reference answer (see [`reference_results`]): any failure, partial answer or difference
/// is recorded with when it happened. For "searches stay exact while …" tests.
pub struct SearchLoad {
    stop: Arc<AtomicBool>,
    searches: Arc<AtomicUsize>,
    problems: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SearchLoad {
    /// Starts `streams` clients of the Merger at `merger_address`, each cycling through
    /// `queries` (k = the reference's length) on `collection`.
    pub async fn start(
        merger_address: &str,
        collection: &str,
        queries: &quiver_index::dataset::Vectors,
        reference: Vec<quiver_proto::v1::QueryResult>,
        streams: usize,
    ) -> SearchLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let searches = Arc::new(AtomicUsize::new(0));
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let reference = Arc::new(reference);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for stream in 0..streams {
            let mut client = connect_merger(merger_address).await;
            let queries = queries.clone();
            let collection = collection.to_string();
            let (stop, searches, problems, reference) = (
                Arc::clone(&stop),
                Arc::clone(&searches),
                Arc::clone(&problems),
                Arc::clone(&reference),
            );
            tasks.push(tokio::spawn(async move {
                let mut row = stream;
                while !stop.load(Ordering::SeqCst) {
                    row = (row + 1) % queries.len();
                    let expected = &reference[row];
                    let mut request =
                        search_request(&collection, queries.row(row), expected.neighbors.len() as u32);
                    request.timeout_ms = 5000;
                    let problem = match client.search(request).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            if response.partial {
                                Some(format!("query {row}: partial answer {:?}", response.shards))
                            } else if response.results.first() != Some(expected) {
                                Some(format!(
                                    "query {row}: results differ from the reference: got {:?}, want {:?}",
                                    response.results.first().map(id_scores),
                                    id_scores(expected)
                                ))
                            } else {
                                None
                            }
                        }
                        Err(status) => Some(format!("query {row} failed: {status:?}")),
                    };
                    if let Some(problem) = problem {
                        problems
                            .lock()
                            .unwrap()
                            .push(format!("at {:?}: {problem}", started.elapsed()));
                    }
                    searches.fetch_add(1, Ordering::SeqCst);
                    // A short pause leaves the 2-core machine to the cluster under test.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        SearchLoad {
            stop,
            searches,
            problems,
            tasks,
        }
    }

    /// Searches finished so far.
    pub fn searches(&self) -> usize {
        self.searches.load(Ordering::SeqCst)
    }

    /// Waits until `more` searches finished after this call (or panics after `timeout`), so a
    /// test knows the load really ran through a phase.
    pub async fn wait_for_more(&self, more: usize, timeout: Duration) {
        let target = self.searches() + more;
        wait_for(timeout, &format!("{more} more searches"), async || {
            let done = self.searches();
            if done >= target {
                Ok(())
            } else {
                Err(format!("{done} of {target} searches done"))
            }
        })
        .await;
    }

    /// Stops the load and returns (searches done, problems seen).
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("search task");
        }
        let problems = std::mem::take(&mut *self.problems.lock().unwrap());
        (self.searches.load(Ordering::SeqCst), problems)
    }
}

/// Reads every expected id of every shard straight from each replica in `replicas` (as
/// [`Cluster::wait_caught_up`] returns them) and panics, listing the damage, unless each
/// holds exactly the expected vector of every id of its shard and no other point.
/// `describe(id, held, expected)` words a wrong vector for the failure message.
pub async fn assert_every_replica_holds(
    cluster: &Cluster,
    collection: &str,
    num_shards: u32,
    expected: &HashMap<String, Vec<f32>>,
    replicas: &BTreeMap<u32, Vec<(String, HostedReplica)>>,
    describe: impl Fn(&str, &[f32], &[f32]) -> String,
) {
    let mut damage = Vec::new();
    let mut checked = 0;
    for (shard, hosted) in replicas {
        let mut ids: Vec<String> = expected
            .keys()
            .filter(|id| quiver_cluster::shard_of(id, num_shards) == *shard)
            .cloned()
            .collect();
        ids.sort();
        for (searcher_id, replica) in hosted {
            let searcher = &cluster.searchers[cluster.searcher_index(searcher_id)];
            let points = match searcher.replica_get(collection, *shard, &ids).await {
                Ok(points) => points,
                Err(status) => {
                    damage.push(format!(
                        "{searcher_id} shard {shard}: Get failed: {status:?}"
                    ));
                    continue;
                }
            };
            checked += 1;
            let found: HashMap<&str, &Vec<f32>> = points
                .iter()
                .map(|point| (point.id.as_str(), &point.vector))
                .collect();
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !found.contains_key(id.as_str()))
                .collect();
            let wrong: Vec<String> = ids
                .iter()
                .filter_map(|id| {
                    let held = found.get(id.as_str())?;
                    let want = &expected[id];
                    (*held != want).then(|| describe(id, held, want))
                })
                .collect();
            if !missing.is_empty() {
                damage.push(format!(
                    "{searcher_id} shard {shard}: {} of {} ids missing, e.g. {:?}",
                    missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
            if !wrong.is_empty() {
                damage.push(format!(
                    "{searcher_id} shard {shard}: {} of {} ids hold another vector than expected, e.g. {:?}",
                    wrong.len(),
                    ids.len(),
                    &wrong[..wrong.len().min(5)]
                ));
            }
            if replica.point_count != ids.len() as u64 {
                damage.push(format!(
                    "{searcher_id} shard {shard}: reports {} points, {} expected",
                    replica.point_count,
                    ids.len()
                ));
            }
        }
    }
    assert!(
        damage.is_empty(),
        "replicas with lost, stale or extra data ({} problems):\n{}",
        damage.len(),
        damage.join("\n")
    );
    assert!(checked > 0, "no replica was checked");
}
