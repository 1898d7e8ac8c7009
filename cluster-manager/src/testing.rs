//! Test support shared by this crate's tests and other crates' integration tests: a real,
//! throw-away etcd server on 127.0.0.1.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::store::EtcdStore;

/// How long a fresh etcd gets to elect itself and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Operations allowed per transaction: above any collection's `num_shards + 1` (the catalog
/// writes a collection in one transaction). Deployments need the same flag.
pub const TEST_MAX_TXN_OPS: u32 = 2048;

/// A single-member etcd with its own data directory, killed and deleted on drop.
pub struct EtcdServer {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    child: Child,
    data_dir: TempDir,
    client_port: u16,
    peer_port: u16,
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EtcdServer")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.id())
            .field("data_dir", &self.data_dir.path())
            .finish()
    }
}

impl EtcdServer {
    /// Starts etcd and returns once it answers a real request. Fails (never skips) when the
    /// `etcd` binary is missing, with a message saying how to get it.
    ///
    /// Ports are found by binding `127.0.0.1:0` and releasing them, since etcd cannot be
    /// handed a listener; if another process grabs one in between, etcd exits and the start
    /// is retried once with fresh ports.
    pub fn start() -> io::Result<EtcdServer> {
        match Self::start_once() {
            Ok(server) => Ok(server),
            Err(StartError::Exited(first)) => {
                Self::start_once().map_err(|second| second.into_io(Some(&first)))
            }
            Err(error) => Err(error.into_io(None)),
        }
    }

    /// The client endpoints, for [`EtcdStore::connect`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    /// A store connected to this server with a 5 s request deadline.
    pub async fn connect_store(&self) -> crate::Result<EtcdStore> {
        EtcdStore::connect(&self.endpoints(), Duration::from_secs(5)).await
    }

    /// The data directory (etcd's files and its log, `etcd.log`).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Kills etcd (like a crash), keeping its data, to test behaviour during an outage.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops etcd if it runs and starts it again on the same ports with the same data, so
    /// keys, revisions and leases survive; returns once it answers again.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.child = spawn_etcd(self.data_dir.path(), self.client_port, self.peer_port)
            .map_err(|error| error.into_io(None))?;
        let address: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        self.wait_until_ready(address)
            .map_err(|error| error.into_io(None))
    }

    fn start_once() -> Result<EtcdServer, StartError> {
        let data_dir = tempfile::Builder::new()
            .prefix("quiver-etcd-")
            .tempdir()
            .map_err(StartError::Io)?;
        let client_port = free_port().map_err(StartError::Io)?;
        let peer_port = free_port().map_err(StartError::Io)?;
        let child = spawn_etcd(data_dir.path(), client_port, peer_port)?;
        let mut server = EtcdServer {
            endpoint: format!("http://127.0.0.1:{client_port}"),
            child,
            data_dir,
            client_port,
            peer_port,
        };
        let address: SocketAddr = ([127, 0, 0, 1], client_port).into();
        server.wait_until_ready(address)?;
        Ok(server)
    }

    /// Polls until the port accepts connections and then a real etcd request succeeds.
    fn wait_until_ready(&mut self, address: SocketAddr) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(StartError::Io)? {
                return Err(StartError::Exited(format!(
                    "etcd exited with {status} before becoming ready; its log:\n{}",
                    self.log_tail()
                )));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
                && self.answers_requests()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd at {} did not become ready within {READY_TIMEOUT:?}; its log:\n{}",
                        self.endpoint,
                        self.log_tail()
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One real read through `etcd_client`, on a thread of its own so that this works both
    /// inside and outside a tokio runtime.
    fn answers_requests(&self) -> bool {
        let endpoint = self.endpoint.clone();
        let probe = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return false;
            };
            runtime.block_on(async move {
                let options = etcd_client::ConnectOptions::new()
                    .with_timeout(Duration::from_secs(1))
                    .with_connect_timeout(Duration::from_secs(1));
                let attempt = async {
                    let mut client =
                        etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?;
                    client.status().await?;
                    client.get("/", None).await?;
                    Ok::<_, etcd_client::Error>(())
                };
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), attempt).await,
                    Ok(Ok(()))
                )
            })
        });
        probe.join().unwrap_or(false)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.path().join("etcd.log"))
            .unwrap_or_else(|error| format!("(log unreadable: {error})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Kill only our own child, by handle; then reap it so no zombie remains.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartError {
    /// The `etcd` binary is not on PATH.
    Missing,
    /// etcd started and exited (typically a port taken between probe and bind).
    Exited(String),
    Io(io::Error),
}

impl StartError {
    fn into_io(self, earlier_attempt: Option<&str>) -> io::Error {
        match self {
            StartError::Missing => io::Error::new(
                io::ErrorKind::NotFound,
                "the `etcd` binary was not found on PATH: these tests need a real etcd (3.4 or \
                 later). Run ./scripts/test.sh, which sets it up, or install it (Debian: \
                 apt-get install etcd-server)",
            ),
            StartError::Exited(message) => {
                let earlier = earlier_attempt
                    .map(|first| format!("\n(an earlier attempt failed too: {first})"))
                    .unwrap_or_default();
                io::Error::other(format!("{message}{earlier}"))
            }
            StartError::Io(error) => error,
        }
    }
}

/// Launches etcd on the given ports and data directory, appending its output to `etcd.log`
/// there.
fn spawn_etcd(data_dir: &Path, client_port: u16, peer_port: u16) -> Result<Child, StartError> {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("etcd.log"))
        .map_err(StartError::Io)?;
    let log_for_stdout = log.try_clone().map_err(StartError::Io)?;
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(data_dir.join("member-data"))
        .args(["--name", "default"])
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .args(["--max-txn-ops", &TEST_MAX_TXN_OPS.to_string()])
        .args(["--logger", "zap", "--log-level", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_for_stdout))
        .stderr(Stdio::from(log))
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(StartError::Missing);
        }
        Err(error) => return Err(StartError::Io(error)),
    };
    Ok(child)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MetadataStore;

    #[tokio::test]
    async fn etcd_server_starts_answers_and_stops() {
        let server = EtcdServer::start().expect("start etcd");
        let store = server.connect_store().await.unwrap();
        store.check_connection().await.unwrap();
        store.put("/hello", b"world".to_vec(), None).await.unwrap();
        assert_eq!(store.get("/hello").await.unwrap().unwrap().value, b"world");
        let data_dir = server.data_dir().to_path_buf();
        assert!(data_dir.exists());
        drop(server);
        assert!(!data_dir.exists(), "the data directory is removed on drop");
    }

    #[tokio::test]
    async fn etcd_server_restart_keeps_data_and_endpoint() {
        let mut server = EtcdServer::start().expect("start etcd");
        let store = server.connect_store().await.unwrap();
        store.put("/kept", b"v".to_vec(), None).await.unwrap();
        server.stop();
        assert!(store.get("/kept").await.is_err(), "etcd is down");
        server.restart().expect("restart etcd");
        // The same client reconnects by itself.
        assert_eq!(store.get("/kept").await.unwrap().unwrap().value, b"v");
    }

    #[test]
    fn etcd_server_starts_outside_a_runtime() {
        let server = EtcdServer::start().expect("start etcd");
        assert!(server.endpoint.starts_with("http://127.0.0.1:"));
    }

    #[tokio::test]
    async fn two_servers_run_side_by_side() {
        let first = EtcdServer::start().expect("start etcd");
        let second = EtcdServer::start().expect("start etcd");
        assert_ne!(first.endpoint, second.endpoint);
        let first_store = first.connect_store().await.unwrap();
        let second_store = second.connect_store().await.unwrap();
        first_store.put("/k", b"1".to_vec(), None).await.unwrap();
        assert_eq!(second_store.get("/k").await.unwrap(), None);
    }
}
