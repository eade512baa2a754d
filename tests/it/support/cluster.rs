#![allow(dead_code)] // the replicas test and the load bench use different parts
//! Replicas of the real binary: `drawbridge run` child processes sharing one
//! PostgreSQL database, the fake Discord and the Azure emulator, each with
//! its own log and fixed ports (so a restarted replica answers where it
//! did, as a pod behind a Service does). Shared by `tests/it/replicas.rs`
//! and `benches/load.rs` (`--replicas N`).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drawbridge::sandbox::Estate;
use serde_json::Value;

use super::app::SUB_PROD;
use super::fake_discord::signing::Signer;
use super::fake_discord::{FakeDiscord, InteractionBuilder, SentInteraction};

/// A free TCP port on 127.0.0.1, for a child process (or a listener bound
/// later) to bind: a replica restarted on it keeps its address, as a pod
/// behind a Service does.
///
/// It is drawn below the kernel's ephemeral range (`ip_local_port_range`).
/// A port bound and released inside that range can be handed to another
/// socket before the child binds it: the local end of any connection a
/// test running beside opens, or another `bind(0)`. The child then cannot
/// listen, and a cluster of replicas never comes up.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    let below = ephemeral_start().unwrap_or(32_768).max(MIN_PORT + 1_000);
    let mut rng = rand::rng();
    (0..1_000)
        .map(|_| rng.random_range(MIN_PORT..below))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// The lowest port [`free_port`] hands out: above the well-known and most
/// registered services' ports.
const MIN_PORT: u16 = 20_000;

/// The first port of the kernel's ephemeral range, on Linux.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Replicas of `drawbridge run` as child processes, each with its own log
/// and fixed ports, so a restarted replica answers where it did.
pub struct Cluster {
    env: HashMap<String, String>,
    dir: tempfile::TempDir,
    logs: Vec<std::fs::File>,
    children: Vec<Child>,
    ops_ports: Vec<u16>,
    http_ports: Vec<u16>,
}

impl Cluster {
    pub fn start(env: HashMap<String, String>, n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let logs: Vec<std::fs::File> = (0..n)
            .map(|i| std::fs::File::create(dir.path().join(format!("replica{i}.log"))).unwrap())
            .collect();
        let mut cluster = Cluster {
            env,
            dir,
            logs,
            children: Vec::new(),
            ops_ports: (0..n).map(|_| free_port()).collect(),
            http_ports: (0..n).map(|_| free_port()).collect(),
        };
        cluster.children = (0..n).map(|i| cluster.spawn(i)).collect();
        cluster
    }

    fn spawn(&self, i: usize) -> Child {
        let mut env = self.env.clone();
        env.insert(
            "DRAWBRIDGE__OPS__LISTEN".into(),
            format!("127.0.0.1:{}", self.ops_ports[i]),
        );
        env.insert(
            "DRAWBRIDGE__HTTP__LISTEN".into(),
            format!("127.0.0.1:{}", self.http_ports[i]),
        );
        spawn_replica(i, &env, &self.logs[i])
    }

    /// SIGKILLs replica `i` and starts it again at once.
    pub fn kill_and_restart(&mut self, i: usize) {
        self.kill(i);
        self.children[i] = self.spawn(i);
    }

    pub fn kill(&mut self, i: usize) {
        // Err only when it has exited already (a second kill).
        let _ = self.children[i].kill();
        self.children[i].wait().expect("the replica is reaped");
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }

    /// Replica `i`'s interactions endpoint (HTTP mode).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}/interactions", self.http_ports[i])
    }

    /// Replica `i`'s `/readyz` answer, `None` while it does not answer.
    pub async fn readyz(&self, i: usize) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_ports[i]);
        let answer = reqwest::get(url).await.ok()?;
        answer.json().await.ok()
    }

    /// Each replica's gateway role (`holder`, `standby`, or `down` when it
    /// does not answer) and whether it is ready, by `/readyz`.
    pub async fn gateway_roles(&self) -> Vec<(String, bool)> {
        let mut roles = Vec::new();
        for i in 0..self.children.len() {
            let ready = self.readyz(i).await.unwrap_or(Value::Null);
            roles.push((
                ready["gateway"].as_str().unwrap_or("down").to_owned(),
                ready["ready"].as_bool().unwrap_or(false),
            ));
        }
        roles
    }

    /// How many replicas.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// The last lines of every replica's log.
    pub fn log_tails(&self, lines: usize) -> String {
        (0..self.children.len())
            .map(|i| {
                let path = self.dir.path().join(format!("replica{i}.log"));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                format!("--- replica{i}:\n{}\n", tail(&text, lines))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `drawbridge run` as replica `i` (host name `replica{i}`) with
/// exactly the environment `env`, its stderr to `log`.
pub fn spawn_replica(i: usize, env: &HashMap<String, String>, log: &std::fs::File) -> Child {
    Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info,serenity=warn,sqlx=warn")
        // The replica id starts with the host name: it tells who holds a lease.
        .env("HOSTNAME", format!("replica{i}"))
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .expect("the drawbridge binary starts")
}

/// The sample estate's subscription with `n` VMs `web-000`… under one
/// policy (SSH), so each request has a VM of its own.
pub fn estate(n: usize) -> Estate {
    use std::fmt::Write as _;
    let mut toml = format!("[[subscriptions]]\nid = \"{SUB_PROD}\"\n");
    for i in 0..n {
        let _ = write!(
            toml,
            "[[subscriptions.vms]]\nname = \"web-{i:03}\"\nresourceGroup = \"rg-web\"\nlocation = \"westeurope\"\nos = \"linux\"\nprivateIp = \"10.0.{}.{}\"\n",
            i / 250,
            4 + i % 250
        );
    }
    toml += "[[subscriptions.policies]]\nresourceGroup = \"rg-web\"\nlocation = \"westeurope\"\n";
    for i in 0..n {
        let _ = write!(
            toml,
            "[[subscriptions.policies.virtualMachines]]\nname = \"web-{i:03}\"\nports = [{{ number = 22, protocol = \"*\", allowedSourceAddressPrefix = \"*\", maxRequestAccessDuration = \"PT3H\" }}]\n"
        );
    }
    Estate::from_toml_str(&toml).expect("the generated estate is valid")
}

/// Delivers `interaction` as Discord does to an endpoint behind a
/// round-robin load balancer: a signed POST to one of `endpoints` (chosen by
/// the interaction id), moving on when a replica's port refuses; a POST cut
/// off mid-way is lost (Discord does not retry). A 200 answer with an
/// interaction response is recorded as the callback.
pub async fn post_signed(
    discord: &FakeDiscord,
    http: &reqwest::Client,
    endpoints: &[String],
    signer: &Signer,
    interaction: InteractionBuilder,
) -> SentInteraction {
    let sent = discord.interaction_json(interaction);
    let body = sent.body_bytes();
    let first = (sent.id as usize) % endpoints.len();
    for k in 0..endpoints.len() {
        let endpoint = &endpoints[(first + k) % endpoints.len()];
        let mut request = http
            .post(endpoint)
            .header("content-type", "application/json")
            .body(body.clone());
        for (name, value) in signer.headers(&body) {
            request = request.header(name, value);
        }
        match request.send().await {
            Err(e) if e.is_connect() => continue,
            Err(_) => break,
            Ok(answer) => {
                let ok = answer.status() == 200;
                let reply: Value = answer.json().await.unwrap_or(Value::Null);
                if ok && reply.get("type").is_some() {
                    discord.record_inline_response(sent.id, reply);
                }
                break;
            }
        }
    }
    sent
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until every replica answers `/readyz` (HTTP mode: serving), up to
/// `timeout`; whether they all did.
pub async fn wait_until_up(cluster: &Cluster, timeout: Duration) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        let mut all = true;
        for i in 0..cluster.len() {
            all &= cluster.readyz(i).await.is_some();
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
