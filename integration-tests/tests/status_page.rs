//! The Merger's status page in a real headless Chromium, driven over WebDriver
//! (chromedriver): the rendered page must agree with etcd, follow a change of the cluster
//! live without a reload, and a screenshot of it is kept at
//! `<target>/screenshots/status-page.png`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; without them the test fails
//! and says to run `./scripts/prerequisites.sh` (test.sh installs them).
//!
//! The WebDriver client here is a few plain HTTP/1.1 calls (new session, navigate, execute
//! a script, window size, screenshot): the protocol is JSON over HTTP, and a WebDriver crate
//! would add some sixty crates to the build for them.

use std::{
    collections::BTreeMap,
    io::{BufRead, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use quiver_index::dataset;
use quiver_integration_tests::{collection_config, http_get, upsert_rows, wait_for, Cluster};
use quiver_proto::v1;
use serde_json::{json, Value};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;
const REBALANCE_KEY: &str = "/quiver/controller/rebalance";

/// The first of `candidates` that exists, looked up on PATH too.
fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for candidate in candidates {
        for directory in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let full = directory.join(candidate);
            if full.is_file() {
                return Some(full);
            }
        }
    }
    None
}

/// A chromedriver process and one headless Chromium session; both end on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(width: u32, height: u32) -> Browser {
        let missing = "run ./scripts/prerequisites.sh (or ./scripts/test.sh), which installs the \
                       Debian packages chromium and chromium-driver";
        let chromium = find_program(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("headless Chromium is missing: {missing}"));
        let chromedriver = find_program(&["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver is missing: {missing}"));
        // chromedriver cannot be handed a listener: take a free port and let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", chromedriver.display()));
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = browser.try_request("GET", "/status", None) {
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port} within 20s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        }}});
        let created = browser.request("POST", "/session", Some(capabilities));
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_string();
        // Headless Chromium still reserves room for its (invisible) toolbars: size the
        // window so the page itself, and so the screenshot, gets width × height.
        let chrome = browser.execute(
            "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
        );
        let extra = |index: usize| chrome[index].as_u64().unwrap_or(0) as u32;
        browser.session_request(
            "POST",
            "/window/rect",
            Some(json!({"width": width + extra(0), "height": height + extra(1)})),
        );
        browser
    }

    /// One WebDriver call; the response's JSON, or why there was none.
    fn try_request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|error| format!("connect to chromedriver: {error}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|error| error.to_string())?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .map_err(|error| format!("send to chromedriver: {error}"))?;
        // chromedriver may keep the connection open whatever the request says: read the
        // header, then exactly the body it announces.
        let mut reader = std::io::BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let read = reader
                .read_line(&mut line)
                .map_err(|error| format!("read from chromedriver: {error}"))?;
            if read == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse::<usize>().ok());
        let content = match length {
            Some(length) => {
                let mut content = vec![0; length];
                reader
                    .read_exact(&mut content)
                    .map_err(|error| format!("read from chromedriver: {error}"))?;
                content
            }
            None => {
                let mut content = Vec::new();
                reader
                    .read_to_end(&mut content)
                    .map_err(|error| format!("read from chromedriver: {error}"))?;
                if head.contains("transfer-encoding: chunked") {
                    dechunk(&content)
                } else {
                    content
                }
            }
        };
        serde_json::from_slice(&content).map_err(|error| {
            format!(
                "chromedriver answered no JSON ({error}): {}",
                String::from_utf8_lossy(&content)
            )
        })
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let response = self
            .try_request(method, path, body)
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
        if let Some(error) = response["value"]["error"].as_str() {
            panic!(
                "{method} {path}: WebDriver error {error}: {}",
                response["value"]["message"]
            );
        }
        response
    }

    /// A call on this session; its `value`.
    fn session_request(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body)["value"].take()
    }

    fn goto(&self, url: &str) {
        self.session_request("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn execute(&self, script: &str) -> Value {
        self.session_request(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn screenshot_png(&self) -> Vec<u8> {
        let encoded = self.session_request("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 screenshot"))
            .expect("screenshot is base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|window| window == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&body[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

/// Checks `png` chunk by chunk (signature, every chunk's CRC, IHDR first, IEND last) and
/// returns the image's (width, height).
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: no signature"
    );
    let mut offset = 8;
    let mut chunks = Vec::new();
    let mut size = None;
    while offset + 12 <= png.len() {
        let length = u32::from_be_bytes(png[offset..offset + 4].try_into().unwrap()) as usize;
        let kind = &png[offset + 4..offset + 8];
        let end = offset + 8 + length;
        assert!(end + 4 <= png.len(), "PNG chunk runs past the end");
        let crc = u32::from_be_bytes(png[end..end + 4].try_into().unwrap());
        assert_eq!(
            crc32fast::hash(&png[offset + 4..end]),
            crc,
            "PNG chunk {} has a bad CRC",
            String::from_utf8_lossy(kind)
        );
        if kind == b"IHDR" {
            assert_eq!(length, 13, "IHDR is 13 bytes");
            let data = &png[offset + 8..end];
            size = Some((
                u32::from_be_bytes(data[0..4].try_into().unwrap()),
                u32::from_be_bytes(data[4..8].try_into().unwrap()),
            ));
        }
        chunks.push(String::from_utf8_lossy(kind).to_string());
        offset = end + 4;
    }
    assert_eq!(
        chunks.first().map(String::as_str),
        Some("IHDR"),
        "{chunks:?}"
    );
    assert_eq!(
        chunks.last().map(String::as_str),
        Some("IEND"),
        "{chunks:?}"
    );
    assert!(chunks.iter().any(|kind| kind == "IDAT"), "{chunks:?}");
    size.expect("an IHDR chunk")
}

/// `<target dir>/screenshots`, beside the profile directory the tests run from.
fn screenshots_dir() -> PathBuf {
    let test_executable = std::env::current_exe().expect("test executable path");
    let target = test_executable
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    target.join("screenshots")
}

/// Per Searcher, the points its replicas report in etcd; and every replica as
/// (collection/shard/searcher, state).
fn etcd_replicas(cluster: &Cluster) -> (BTreeMap<String, u64>, BTreeMap<String, String>) {
    let mut vectors: BTreeMap<String, u64> = cluster
        .etcd_keys("/quiver/searchers/")
        .iter()
        .map(|key| (key.rsplit('/').next().unwrap().to_string(), 0))
        .collect();
    let mut states = BTreeMap::new();
    for key in cluster.etcd_keys("/quiver/replicas/") {
        let Some(record) = cluster.etcd_json(&key) else {
            continue;
        };
        let name = key.trim_start_matches("/quiver/replicas/").to_string();
        let searcher = name.rsplit('/').next().unwrap().to_string();
        *vectors.entry(searcher).or_default() += record["point_count"].as_u64().unwrap_or(0);
        states.insert(name, record["state"].as_str().unwrap_or("").to_string());
    }
    (vectors, states)
}

/// What the page shows, read from the rendered DOM (text as displayed).
const READ_PAGE: &str = r##"
const text = (node) => node ? node.textContent.trim() : null;
return {
  live: document.getElementById("live").getAttribute("data-live"),
  marker: window.quiverNotReloaded === true,
  searchers: [...document.querySelectorAll("#searchers tbody tr")].map((row) => ({
    id: row.getAttribute("data-searcher"),
    state: text(row.querySelector(".chip")),
    vectors: text(row.querySelector(".vectors .value")),
  })),
  replicas: [...document.querySelectorAll("#collections .replica")].map((replica) => ({
    name: replica.closest(".collection").getAttribute("data-collection") + "/" +
      replica.closest("tr").getAttribute("data-shard") + "/" + text(replica.querySelector(".ident")),
    state: text(replica.querySelector(".chip")),
  })),
  ring: [...document.querySelectorAll("svg#ring g.ring-searcher")].map((group) => ({
    id: group.getAttribute("data-searcher"),
    ticks: group.querySelectorAll("line").length,
  })),
  ring_shards: document.querySelectorAll("svg#ring g.ring-shard").length,
  payload_indexes: Object.fromEntries([...document.querySelectorAll("#collections .collection")].map((collection) => {
    const indexes = collection.querySelector(".collection-head .payload-indexes");
    return [collection.getAttribute("data-collection"),
      indexes ? [indexes.getAttribute("data-payload-indexes"), text(indexes)] : null];
  })),
  rebalance_shown: !document.getElementById("rebalance-body").hidden,
  rebalance_trigger: text(document.getElementById("rebalance-trigger")),
  rebalance_fraction: text(document.getElementById("rebalance-fraction")),
  rebalance_status: text(document.getElementById("rebalance-status")),
  viewport: [window.innerWidth, window.innerHeight, window.devicePixelRatio],
};
"##;

/// Err says how the page differs from etcd: every registered Searcher listed with the
/// points etcd has for it, every replica in etcd shown ACTIVE, one ring group per Searcher.
fn page_matches_etcd(page: &Value, cluster: &Cluster) -> Result<(), String> {
    let (vectors, states) = etcd_replicas(cluster);
    if page["live"] != "live" {
        return Err(format!("live indicator {}", page["live"]));
    }
    let shown: BTreeMap<String, u64> = page["searchers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let count = row["vectors"]
                .as_str()
                .unwrap_or("")
                .replace(',', "")
                .parse()
                .unwrap_or(u64::MAX);
            (row["id"].as_str().unwrap_or("").to_string(), count)
        })
        .collect();
    if shown != vectors {
        return Err(format!("searchers shown {shown:?}, etcd has {vectors:?}"));
    }
    if let Some(row) = page["searchers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|row| row["state"] != "LIVE")
    {
        return Err(format!("searcher row {row}"));
    }
    let replicas: BTreeMap<String, String> = page["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|replica| {
            (
                replica["name"].as_str().unwrap_or("").to_string(),
                replica["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    if replicas != states || states.values().any(|state| state != "ACTIVE") {
        return Err(format!("replicas shown {replicas:?}, etcd has {states:?}"));
    }
    let ring: Vec<&str> = page["ring"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|group| group["ticks"] == 128)
        .filter_map(|group| group["id"].as_str())
        .collect();
    if !ring.iter().copied().eq(vectors.keys().map(String::as_str)) {
        return Err(format!("ring groups {}", page["ring"]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_the_cluster_live_in_headless_chromium() {
    // Before anything else, so a missing browser fails at once with what to do.
    let browser = Browser::start(WIDTH, HEIGHT);

    let mut cluster = Cluster::start(3, 4).await;
    let mut client = cluster.client().await;
    let (shards, replication_factor) = (6, 2);
    let mut create = collection_config("docs", 16, v1::Metric::L2, shards, replication_factor);
    if let Some(config) = create.config.as_mut() {
        config.payload_indexes = vec![
            v1::PayloadIndex {
                key: "row".into(),
                r#type: v1::PayloadIndexType::Integer as i32,
            },
            v1::PayloadIndex {
                key: "meta.lang".into(),
                r#type: v1::PayloadIndexType::Keyword as i32,
            },
        ];
    }
    client.create_collection(create).await.expect("create");
    upsert_rows(&mut client, "docs", &dataset::synthetic(600, 16, 7), 200).await;

    // The JSON endpoint and the redirect, plainly over HTTP/1.
    let (status, body) = http_get(&cluster.merger_address, "/api/status");
    assert!(status.contains("200"), "GET /api/status answered {status}");
    let snapshot: Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(snapshot["summary"]["shards"], 6, "{snapshot}");
    assert_eq!(snapshot["ring"]["virtual_nodes"], 128);
    let (status, _) = http_get(&cluster.merger_address, "/");
    assert!(status.contains("307"), "GET / answered {status}");

    // A second Merger serves the page, so it can be stopped with the page open.
    let mut page_merger = cluster.start_merger("merger-page", &["--controller", "false"]);
    browser.goto(&format!("{}/status", page_merger.address));
    browser.execute("window.quiverNotReloaded = true; return true;");
    wait_for(
        Duration::from_secs(60),
        "the page to show every searcher's vectors and every replica ACTIVE",
        async || page_matches_etcd(&browser.execute(READ_PAGE), &cluster),
    )
    .await;
    let page = browser.execute(READ_PAGE);
    assert_eq!(page["ring_shards"], 6, "{page}");
    // The collection's header lists its payload indexes, as declared.
    assert_eq!(
        page["payload_indexes"]["docs"],
        json!([
            "row:integer,meta.lang:keyword",
            "payload indexes: row (integer), meta.lang (keyword)"
        ]),
        "{page}"
    );
    assert_eq!(
        snapshot["collections"][0]["payload_indexes"],
        json!([{"key": "row", "type": "integer"}, {"key": "meta.lang", "type": "keyword"}]),
        "{snapshot}"
    );

    // Change the cluster under the open page: a fourth Searcher makes the controller
    // rebalance.
    let before = cluster.etcd_json(REBALANCE_KEY);
    let added = cluster.add_searcher(&[]);
    let new_id = cluster.searchers[added].id.clone();
    let record = wait_for(
        Duration::from_secs(90),
        "a finished rebalance including the new searcher, shown on the page",
        async || {
            let record = cluster
                .etcd_json(REBALANCE_KEY)
                .filter(|record| Some(record) != before.as_ref())
                .ok_or("no new rebalance record yet")?;
            let includes = record["searchers"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|id| id == new_id.as_str()));
            if !includes || record["finished_at"].is_null() {
                return Err(format!("rebalance {record}"));
            }
            let page = browser.execute(READ_PAGE);
            page_matches_etcd(&page, &cluster)?;
            let fraction = record["moved_fraction"].as_f64().unwrap_or(-1.0);
            let expected = format!("{:.1}%", fraction * 100.0);
            if !page["rebalance_shown"].as_bool().unwrap_or(false)
                || page["rebalance_fraction"] != expected.as_str()
                || page["rebalance_trigger"] != record["trigger"]
                || page["rebalance_status"] != "FINISHED"
            {
                return Err(format!(
                    "page shows rebalance {} {} {}, etcd {record}",
                    page["rebalance_trigger"], page["rebalance_fraction"], page["rebalance_status"]
                ));
            }
            Ok(record)
        },
    )
    .await;
    println!(
        "rebalance shown live: {} moved {} of replicas",
        record["trigger"], record["moved_fraction"]
    );
    let page = browser.execute(READ_PAGE);
    assert_eq!(page["marker"], true, "the page reloaded: {page}");
    assert_eq!(page["searchers"].as_array().map(Vec::len), Some(4));

    let png = browser.screenshot_png();
    let directory = screenshots_dir();
    std::fs::create_dir_all(&directory).expect("screenshots dir");
    let path = directory.join("status-page.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("status page screenshot: {}", path.display());
    let viewport = &page["viewport"];
    assert_eq!(
        *viewport,
        json!([WIDTH, HEIGHT, 1]),
        "the page is shown at {WIDTH}x{HEIGHT}"
    );
    assert_eq!(
        png_size(&png),
        (WIDTH, HEIGHT),
        "the screenshot is the {WIDTH}x{HEIGHT} window"
    );

    // An open page (its event stream) must not hold up a Merger's graceful stop.
    let started = Instant::now();
    let exit = page_merger.terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|status| status.success()),
        "the page's merger did not stop cleanly within 10s with the page open ({exit:?})"
    );
    println!(
        "merger stopped in {:?} with the page open",
        started.elapsed()
    );
}
