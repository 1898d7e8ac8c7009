//! The README's first command, `./scripts/quickstart.sh`, run for real with the binaries the
//! test suite built (`QUIVER_BIN_DIR`, so it skips its release build): it starts etcd, three
//! Searchers and a Merger, loads siftsmall, finds every true neighbour, and with
//! `QUIVER_STAY=1` keeps the cluster running until a SIGTERM, after which every process it
//! started is gone within 15 s.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use quiver_integration_tests::{binary, shared_data};

/// The pids of the processes in process group `group`, read from /proc.
fn processes_in_group(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so split after it.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields: Vec<String> = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    // A zombie is gone for every purpose but its parent's wait.
                    (fields.first()? != "Z").then(|| fields.get(2)?.parse::<u32>().ok())?
                })
                == Some(group)
        })
        .collect()
}

#[test]
fn the_quickstart_runs_and_a_kept_cluster_stops_on_sigterm() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = binary("quiver-searcher")
        .parent()
        .expect("the binaries' folder")
        .to_path_buf();
    for name in ["quiver-merger", "quiverctl"] {
        binary(name);
    }
    let mut child = Command::new("bash")
        .arg(repo.join("scripts/quickstart.sh"))
        .env("QUIVER_BIN_DIR", &bin_dir)
        .env("QUIVER_STAY", "1")
        .env_remove("QUIVER_KEEP")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: everything it starts is found by the group id.
        .process_group(0)
        .spawn()
        .expect("run scripts/quickstart.sh");
    let group = child.id();

    // Both streams, line by line, into one channel.
    let (lines, received) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    drop(lines);

    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let kept_running = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                let kept = line.contains("the cluster keeps running");
                output.push(line);
                if kept {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let text = output.join("\n");
    if !kept_running {
        let _ = Command::new("bash")
            .args(["-c", &format!("kill -KILL -- -{group}")])
            .status();
        let _ = child.wait();
        panic!("the quickstart did not get to keep the cluster running:\n{text}");
    }
    if shared_data("siftsmall").is_some() {
        assert!(
            text.contains("recall@10 against the ground truth: 1.000"),
            "siftsmall's recall@10 through the quickstart's exact index:\n{text}"
        );
    }
    assert!(
        text.contains("searcher-3"),
        "the status lists the Searchers:\n{text}"
    );
    assert!(
        text.contains("/quiver/assignments/siftsmall/0"),
        "the etcd keys are shown:\n{text}"
    );
    let running = processes_in_group(group);
    assert!(
        running.len() >= 5,
        "etcd, three Searchers and a Merger run under the script: {running:?}"
    );

    let signalled = Instant::now();
    let status = Command::new("bash")
        .args(["-c", &format!("kill -TERM {group}")])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exited = loop {
        if let Some(status) = child.try_wait().expect("the script's status") {
            break Some(status);
        }
        if signalled.elapsed() > Duration::from_secs(15) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let left = loop {
        let left = processes_in_group(group);
        if left.is_empty() || signalled.elapsed() > Duration::from_secs(15) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = signalled.elapsed();
    if exited.is_none() || !left.is_empty() {
        let _ = Command::new("bash")
            .args(["-c", &format!("kill -KILL -- -{group}")])
            .status();
        let _ = child.wait();
    }
    for reader in readers {
        let _ = reader.join();
    }
    output.extend(received.try_iter());
    let text = output.join("\n");
    assert!(
        exited.is_some(),
        "the script did not exit within 15 s of SIGTERM:\n{text}"
    );
    assert!(
        left.is_empty(),
        "processes {left:?} of the quickstart were still running {took:?} after SIGTERM:\n{text}"
    );
    assert!(
        text.contains("stopping what was started"),
        "the clean-up ran:\n{text}"
    );
    println!("every process gone {took:?} after SIGTERM");
}
