//! The operator binary as a separate process, the way it runs in a cluster: it can be killed
//! at any moment and started again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::control_plane;

pub struct Operator {
    child: Option<Child>,
    /// The `cloudkeys` binary: this build's, or another release's (`start_release`).
    binary: PathBuf,
    log: PathBuf,
    namespace: String,
    /// Watches every namespace, not only `namespace` (which then holds ClusterKeyIssuers' Secrets).
    everywhere: bool,
    env: Vec<(String, String)>,
}

impl Operator {
    /// Starts `cloudkeys run` watching one namespace, logging to a file of its own.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[])
    }

    pub fn start_with(namespace: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(Path::new(env!("CARGO_BIN_EXE_cloudkeys")), namespace, env, false)
    }

    /// Starts `cloudkeys run` watching every namespace, as a cluster's one operator does, with
    /// `namespace` as its cluster resource namespace. Only for a test with a control plane of its
    /// own (`support::own_control_plane`): it acts on every other test's objects too.
    pub fn start_everywhere(namespace: &str, env: &[(&str, &str)]) -> Self {
        assert!(control_plane().own, "an all-namespaces operator needs own_control_plane()");
        Self::launch(Path::new(env!("CARGO_BIN_EXE_cloudkeys")), namespace, env, true)
    }

    /// Like [`Self::start_everywhere`], with the `cloudkeys` binary at `binary` (another
    /// release's, for the upgrade test).
    pub fn start_release(binary: &Path, namespace: &str, env: &[(&str, &str)]) -> Self {
        assert!(control_plane().own, "an all-namespaces operator needs own_control_plane()");
        Self::launch(binary, namespace, env, true)
    }

    fn launch(binary: &Path, namespace: &str, env: &[(&str, &str)], everywhere: bool) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = control_plane().dir.join(format!("operator-{namespace}-{n}.log"));
        let mut op = Self {
            child: None,
            binary: binary.to_path_buf(),
            log,
            namespace: namespace.to_string(),
            everywhere,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        let out = File::options().create(true).append(true).open(&self.log).expect("operator log file");
        let err = out.try_clone().expect("log file handle");
        let watched: &[&str] = if self.everywhere { &[] } else { &["--namespace", &self.namespace] };
        let child = Command::new(&self.binary)
            .arg("run")
            .args(watched)
            .args(["--cluster-resource-namespace", &self.namespace])
            .args(["--metrics-address", "127.0.0.1:0", "--log-format", "json"])
            .env("KUBECONFIG", &control_plane().kubeconfig)
            .env("RUST_LOG", "info,cloudkeys=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("operator {} does not start: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process started last is still running (it has not crashed or exited).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Resident memory of the process, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("the operator runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status readable");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// SIGKILL: no chance to finish anything, as in a node crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself (a crash point); true if it did in time.
    pub async fn wait_exit(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// Starts the process again with other extra environment variables.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill();
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Base URL of the operator's HTTP endpoints (it logs the port it bound).
    pub async fn http_base(&self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            for line in self.logs().lines().rev() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                if v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("serving /metrics")) {
                    if let Some(addr) = v["fields"]["address"].as_str() {
                        return format!("http://{addr}");
                    }
                }
            }
            assert!(std::time::Instant::now() < deadline, "the operator never said where it serves /metrics");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The key ids this operator's `local` provider minted, live and revoked (`/local/keys`):
    /// what the "provider" itself holds, whatever the AccessKeys' status says.
    pub async fn local_keys(&self) -> cloudkeys::providers::local::LocalKeyIds {
        let url = format!("{}/local/keys", self.http_base().await);
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        response.json().await.unwrap_or_else(|e| panic!("GET {url}: not the key ids: {e}"))
    }

    /// Sends SIGTERM and waits for the process to end; returns whether it exited successfully.
    pub async fn terminate(&mut self, timeout: std::time::Duration) -> bool {
        let Some(child) = self.child.as_mut() else { return false };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.success();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            eprintln!("--- last operator log lines ({}) ---", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
