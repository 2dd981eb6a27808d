//! The container image, run with Podman the way the Kubernetes StatefulSet of the
//! `self-hosted` overlay runs it: its arguments, environment, working directory, user, mounts
//! and read-only root filesystem are read from the rendered manifests (`kubectl kustomize`), not
//! repeated here. Against Mosquitto and SeaweedFS on the host: the probes answer at the
//! manifest's paths, 10,000 observations reach S3, SIGTERM drains within the manifest's grace
//! period and leaves nothing in the spool, and a container started on the volume a `kill -9`
//! left behind stores that spool.
//!
//! The image is the Dockerfile's `prebuilt` target around the binary cargo built for this test,
//! on a Debian base made from Debian's packages (`mmdebstrap`, then `podman import`): container
//! registries cannot be reached from these machines. Podman runs with the settings TESTING.md
//! gives for them (`default_ulimits = []`, runc, chroot isolation for builds, host network).
//! Where Podman is installed but cannot run a container, the test says so and skips; a missing
//! Podman is a failure with the install command.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::mosquitto::Mosquitto;
use testkit::weed::Weed;

const BASE_IMAGE: &str = "localhost/debian:bookworm-slim";
const IMAGE: &str = "localhost/ccstream:container-test";
const BUCKET: &str = "container-observations";
const OBSERVATIONS: u64 = 10_000;
const AFTER_KILL: u64 = 2_000;
/// How long the service may take to start or to store what it took.
const WAIT: Duration = Duration::from_secs(60);
/// Values for the Secret references of the manifest (the brokers here take any).
const SECRETS: &[(&str, &str)] = &[
    (
        "CCSTREAM_API__JWT__HS256_SECRET",
        "container-test-secret-0123456789abcdef",
    ),
    ("CCSTREAM_MQTT__USERNAME", "ccstream"),
    ("CCSTREAM_MQTT__PASSWORD", "broker-password"),
    ("AWS_ACCESS_KEY_ID", "any"),
    ("AWS_SECRET_ACCESS_KEY", "any"),
];
/// The pod name the downward API would give the first replica.
const POD: &str = "ccstream-0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Podman with the settings these machines need (TESTING.md), its configuration in `dir`.
struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
        Podman { conf }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "runc"])
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The Debian base image, made from Debian's packages once per machine.
fn ensure_base_image(podman: &Podman, dir: &Path) {
    if podman
        .run(&["image", "exists", BASE_IMAGE])
        .status
        .success()
    {
        return;
    }
    let rootfs = dir.join("rootfs.tar");
    let made = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--include=ca-certificates", "bookworm"])
        .arg(&rootfs)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("mmdebstrap: {e} (apt-get install mmdebstrap; scripts/setup-test-deps.sh does)")
        });
    assert!(
        made.status.success(),
        "mmdebstrap failed:\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    podman.ok(&["import", rootfs.to_str().unwrap(), BASE_IMAGE]);
}

/// The Dockerfile's `prebuilt` target around this test's binary.
fn build_image(podman: &Podman, dir: &Path) {
    let context = dir.join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::copy(repo().join("Dockerfile"), context.join("Dockerfile")).unwrap();
    std::fs::copy(common::binary(), context.join("ccstream")).unwrap();
    podman.ok(&[
        "build",
        "--isolation",
        "chroot",
        "--target",
        "prebuilt",
        "--build-arg",
        &format!("BASE_IMAGE={BASE_IMAGE}"),
        "--build-arg",
        "BINARY=ccstream",
        "-t",
        IMAGE,
        context.to_str().unwrap(),
    ]);
}

/// The rendered `self-hosted` overlay as JSON objects.
fn rendered_manifests() -> Vec<Value> {
    let tree = repo().join("deploy/kubernetes/overlays/self-hosted");
    let yaml = Command::new("kubectl")
        .arg("kustomize")
        .arg(&tree)
        .output()
        .expect("kubectl (apt-get install kubernetes-client; scripts/setup-test-deps.sh does)");
    assert!(
        yaml.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&yaml.stderr)
    );
    let mut python = Command::new("python3")
        .arg(repo().join("tests/deploy/yaml_to_json.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(python.stdin.as_mut().unwrap(), &yaml.stdout).unwrap();
    drop(python.stdin.take());
    let json = python.wait_with_output().unwrap();
    assert!(
        json.status.success(),
        "yaml_to_json.py (python3 -m pip install pyyaml): {}",
        String::from_utf8_lossy(&json.stderr)
    );
    serde_json::from_slice(&json.stdout).unwrap()
}

/// What the StatefulSet and its ConfigMap say about running the container.
struct PodSpec {
    args: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: String,
    user: String,
    read_only_root: bool,
    data_mount: String,
    config_mount: String,
    config_toml: String,
    tmp_mounts: Vec<String>,
    readiness_path: String,
    liveness_path: String,
    probe_port: u64,
    grace: Duration,
}

fn pod_spec(objects: &[Value]) -> PodSpec {
    let kind = |k: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} rendered"))
    };
    let set = kind("StatefulSet");
    let spec = &set["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
                POD.to_owned()
            } else if e["valueFrom"]["secretKeyRef"].is_object() {
                SECRETS
                    .iter()
                    .find(|(k, _)| *k == name)
                    .unwrap_or_else(|| panic!("no test value for the Secret behind {name}"))
                    .1
                    .to_owned()
            } else {
                panic!("unsupported env entry {e}");
            };
            (name, value)
        })
        .collect();
    let volumes = spec["volumes"].as_array().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("volume {volume} not mounted"))
            .to_owned()
    };
    let config_map = volumes
        .iter()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap();
    let config_toml = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == config_map)
        .and_then(|o| o["data"]["ccstream.toml"].as_str())
        .unwrap()
        .to_owned();
    let tmp_mounts = volumes
        .iter()
        .filter(|v| v["emptyDir"].is_object())
        .map(|v| mount_of(v["name"].as_str().unwrap()))
        .collect();
    let port_named = |name: &Value| -> u64 {
        if let Some(n) = name.as_u64() {
            return n;
        }
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap()
    };
    let readiness = &container["readinessProbe"]["httpGet"];
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(
        port_named(&readiness["port"]),
        port_named(&liveness["port"])
    );
    let sc = &container["securityContext"];
    PodSpec {
        args: container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        env,
        working_dir: container["workingDir"].as_str().unwrap().to_owned(),
        user: format!("{}:{}", sc["runAsUser"], sc["runAsGroup"]),
        read_only_root: sc["readOnlyRootFilesystem"] == true,
        data_mount: mount_of("data"),
        config_mount: mount_of("config"),
        config_toml,
        tmp_mounts,
        readiness_path: readiness["path"].as_str().unwrap().to_owned(),
        liveness_path: liveness["path"].as_str().unwrap().to_owned(),
        probe_port: port_named(&readiness["port"]),
        grace: Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap()),
    }
}

/// One container of the test, removed when dropped.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
    api: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.podman.run(&["logs", &self.name]);
            eprintln!(
                "--- container {} ---\n{}{}",
                self.name,
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = self
            .podman
            .run(&["rm", "--force", "--time", "0", &self.name]);
    }
}

impl Container<'_> {
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("{}{path}", self.api)).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    async fn wait_for(&self, path: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((200, body)) = self.get(path).await {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} never answered 200");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await.expect("metrics");
        common::metric_value(&body, series)
    }

    async fn wait_spooled(&self, n: u64) {
        let series = "ccstream_objects_records_total{kind=\"observations\"}";
        let deadline = Instant::now() + WAIT;
        while self.metric(series).await < n as f64 {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} observations spooled"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn exit_code(&self) -> String {
        self.podman
            .ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
    }
}

struct Setup<'a> {
    podman: &'a Podman,
    pod: PodSpec,
    volume: String,
    config_dir: PathBuf,
    /// The settings that point the manifest's placeholders at this machine's services.
    local: Vec<(String, String)>,
}

impl Setup<'_> {
    /// `podman run -d` with the manifest's user, working directory, mounts, environment and
    /// arguments, plus the local service addresses.
    fn start(&self, name: &str) -> Container<'_> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.into(),
            "--network".into(),
            "host".into(),
            "--user".into(),
            self.pod.user.clone(),
            "--workdir".into(),
            self.pod.working_dir.clone(),
            "-v".into(),
            format!("{}:{}", self.volume, self.pod.data_mount),
            "-v".into(),
            format!("{}:{}:ro", self.config_dir.display(), self.pod.config_mount),
        ];
        if self.pod.read_only_root {
            args.push("--read-only".into());
        }
        for tmp in &self.pod.tmp_mounts {
            args.extend(["--tmpfs".into(), tmp.clone()]);
        }
        for (k, v) in self.pod.env.iter().chain(&self.local) {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.push(IMAGE.into());
        args.extend(self.pod.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = self.podman.run(&["rm", "--force", "--time", "0", name]);
        self.podman.ok(&args);
        let listen = self
            .local
            .iter()
            .find(|(k, _)| k == "CCSTREAM_API__LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap();
        let port = listen.rsplit_once(':').unwrap().1;
        Container {
            podman: self.podman,
            name: name.into(),
            api: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Files in the spool directory of the volume, the stored-ids journal aside.
    fn spool_files(&self) -> Vec<String> {
        let mountpoint = self.podman.ok(&[
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &self.volume,
        ]);
        let spool = Path::new(&mountpoint).join("spool");
        std::fs::read_dir(&spool)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".spool"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every observation's `seq` in the bucket, with how often it is there.
async fn stored(weed: &Weed) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for key in weed.list_keys(BUCKET, "").await {
        let body = weed.get(BUCKET, &key).await;
        for record in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
            let seq = record.unwrap()["seq"].as_u64().unwrap();
            *seen.entry(seq).or_default() += 1;
        }
    }
    seen
}

async fn wait_stored(weed: &Weed, n: u64) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = stored(weed).await;
        if seen.len() as u64 >= n {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} observations in S3",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn publish(broker: &Mosquitto, seqs: std::ops::Range<u64>) {
    let lines: Vec<String> = seqs
        .map(|seq| {
            format!(
                "{{\"seq\":{seq},\"state\":{{\"reported\":{{\"temp\":{}}}}}}}",
                seq % 90
            )
        })
        .collect();
    for (i, chunk) in lines.chunks(2_500).enumerate() {
        broker.publish_lines(&format!("$aws/things/thing-{i}/shadow/update"), chunk);
    }
}

/// Whether Podman can run a container here; `Err` with why not.
fn podman_runs(podman: &Podman) -> Result<(), String> {
    let version = Command::new("podman").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "podman not found: apt-get install podman runc mmdebstrap uidmap \
         (scripts/setup-test-deps.sh does)"
    );
    let out = podman.run(&["run", "--rm", "--network", "host", BASE_IMAGE, "true"]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[tokio::test]
async fn the_image_runs_as_the_statefulset_declares() {
    let dir = tempfile::tempdir().unwrap();
    let podman = Podman::new(dir.path());
    ensure_base_image(&podman, dir.path());
    if let Err(why) = podman_runs(&podman) {
        eprintln!("SKIPPED: Podman cannot run a container on this machine: {why}");
        return;
    }
    build_image(&podman, dir.path());

    let pod = pod_spec(&rendered_manifests());
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(config_dir.join("ccstream.toml"), &pod.config_toml).unwrap();
    // The manifest's TOML names its file as the args do.
    assert_eq!(
        pod.args,
        ["--config", &format!("{}/ccstream.toml", pod.config_mount)]
    );
    let toml: toml::Value = toml::from_str(&pod.config_toml).unwrap();
    let listen = toml["api"]["listen"].as_str().unwrap();
    assert_eq!(
        listen.rsplit_once(':').unwrap().1,
        pod.probe_port.to_string(),
        "the probes ask the port api.listen opens"
    );

    let broker = Mosquitto::builder()
        .config("max_queued_messages 1000000\n")
        .start();
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let volume = format!("ccstream-container-test-{}", std::process::id());
    let _ = podman.run(&["volume", "rm", "--force", &volume]);
    podman.ok(&["volume", "create", &volume]);
    // The host network is shared with other tests: the API on a free port rather than the
    // manifest's (checked above to be the one the probes use).
    let api_port = common::free_port();
    let setup = Setup {
        podman: &podman,
        pod,
        volume: volume.clone(),
        config_dir,
        local: vec![
            ("CCSTREAM_API__LISTEN".into(), format!("0.0.0.0:{api_port}")),
            ("CCSTREAM_MQTT__URL".into(), broker.url()),
            ("CCSTREAM_OBJECTS__ENDPOINT".into(), weed.endpoint()),
            ("CCSTREAM_OBJECTS__BUCKET".into(), BUCKET.into()),
        ],
    };

    // 1. The probes, 10,000 observations, and SIGTERM within the grace period.
    let first = setup.start("ccstream-container-test-1");
    let live = first.wait_for(&setup.pod.liveness_path).await;
    assert_eq!(live.trim(), "ok");
    first.wait_for(&setup.pod.readiness_path).await;
    publish(&broker, 0..OBSERVATIONS);
    first.wait_spooled(OBSERVATIONS).await;
    let stopping = Instant::now();
    podman.ok(&[
        "stop",
        "--time",
        &setup.pod.grace.as_secs().to_string(),
        &first.name,
    ]);
    let took = stopping.elapsed();
    assert!(
        took < setup.pod.grace,
        "stopped after {took:?}, over the grace period"
    );
    assert_eq!(first.exit_code(), "0", "exit code after SIGTERM");
    let seen = stored(&weed).await;
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<u64>>(),
        (0..OBSERVATIONS).collect::<BTreeSet<u64>>(),
        "every observation in S3 after the drain"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "an observation stored twice"
    );
    assert_eq!(
        setup.spool_files(),
        Vec::<String>::new(),
        "spool left after SIGTERM"
    );
    drop(first);

    // 2. kill -9 with records in the spool; the next container on the volume stores them.
    let second = setup.start("ccstream-container-test-2");
    second.wait_for(&setup.pod.readiness_path).await;
    publish(&broker, OBSERVATIONS..OBSERVATIONS + AFTER_KILL);
    second.wait_spooled(AFTER_KILL).await;
    podman.ok(&["kill", "--signal", "KILL", &second.name]);
    let left = setup.spool_files();
    assert!(!left.is_empty(), "kill -9 left no spool to recover");
    drop(second);
    let third = setup.start("ccstream-container-test-3");
    third.wait_for(&setup.pod.readiness_path).await;
    let seen = wait_stored(&weed, OBSERVATIONS + AFTER_KILL).await;
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<u64>>(),
        (0..OBSERVATIONS + AFTER_KILL).collect::<BTreeSet<u64>>()
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "an observation stored twice"
    );
    podman.ok(&[
        "stop",
        "--time",
        &setup.pod.grace.as_secs().to_string(),
        &third.name,
    ]);
    assert_eq!(third.exit_code(), "0");
    assert_eq!(setup.spool_files(), Vec::<String>::new());
    drop(third);
    let _ = podman.run(&["volume", "rm", "--force", &volume]);
}
