//! The deployment manifests in `deploy/`, checked offline with the tools an operator would
//! trust, then held to what running ccstream needs:
//!
//! - Kubernetes: `kubectl kustomize` renders the base and both overlays; `kubernetes-validate
//!   --strict` checks every rendered object against the Kubernetes schemas; the objects must
//!   then meet the deployment's requirements (one replica, non-root with a read-only root,
//!   probes on /readyz and /healthz, the MQTT client id from the pod name, the spool on the
//!   pod's own volume, a termination grace above ccstream's), and each tree's ccstream.toml,
//!   with the environment its StatefulSet sets, must pass `ccstream check-config`.
//! - ECS: task-definition.json and service.json against botocore's ecs model and registered
//!   in moto (`tests/deploy/validate_ecs.py`), the same requirements, `check-config` with the
//!   task's environment (ECS has no config file), and the init container's script run by `sh`.
//! - checkov on `deploy/` and the `Dockerfile`: a failed check fails the test unless it is in
//!   a skip list below, with its reason.
//!
//! A missing tool fails the test with the command that installs it; scripts/setup-test-deps.sh
//! installs them all.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Kubernetes version whose schemas the rendered objects must match.
const KUBERNETES_VERSION: &str = "1.32.0";
/// The pod name the StatefulSet's first replica gets (and so its MQTT client id).
const FIRST_POD: &str = "ccstream-0";
/// The container's working directory and the volume mount the relative paths resolve under.
const WORKING_DIR: &str = "/var/lib/ccstream";
const DATA_DIR: &str = "/var/lib/ccstream/data";
const CONFIG_FILE: &str = "/etc/ccstream/ccstream.toml";
const API_PORT: u64 = 8088;
const UID: u64 = 10001;
/// `ccstream healthcheck`'s own timeout (`--timeout-secs`, default 5): the runtime must wait
/// longer than that for the probe.
const HEALTHCHECK_TIMEOUT_SECS: u64 = 5;

/// checkov findings on `deploy/` that are accepted, each with why. Everything else fails.
const CHECKOV_SKIPS_DEPLOY: &[(&str, &str)] = &[
    (
        "CKV_K8S_11",
        "no CPU limit on purpose: CFS throttling stalls the spool's fsync and the PUBACKs in \
         bursts; the memory limit protects the node (statefulset.yaml)",
    ),
    (
        "CKV_K8S_15",
        "imagePullPolicy IfNotPresent: a restarted pod must not depend on the registry; pin the \
         image by digest for immutability",
    ),
    (
        "CKV_K8S_35",
        "the JWT secret and the broker password reach ccstream only through its config or \
         CCSTREAM_* variables (no *_file keys), the S3 keys through the AWS SDK's variables",
    ),
    (
        "CKV_K8S_43",
        "the image is a placeholder that operators replace; they set `digest:` in the \
         kustomization's images entry",
    ),
];

/// checkov findings on the Dockerfile that are accepted, each with why.
const CHECKOV_SKIPS_DOCKERFILE: &[(&str, &str)] = &[
    (
        "CKV_DOCKER_2",
        "no HEALTHCHECK in the image: Kubernetes probes /healthz and /readyz over HTTP, ECS runs \
         `ccstream healthcheck` from the task definition",
    ),
    (
        "CKV_DOCKER_7",
        "false positive: `FROM ${RUST_IMAGE}` is an ARG whose default is a fixed tag",
    ),
];

// ---------------------------------------------------------------------------------------------
// Running tools

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> String {
    repo()
        .join("tests/deploy")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A program the tests run, and how to get it when it is missing.
struct Tool {
    program: &'static str,
    install: &'static str,
}

const KUBECTL: Tool = Tool {
    program: "kubectl",
    install: "apt-get install kubernetes-client (any kubectl from 1.20 on; \
              scripts/setup-test-deps.sh installs it when kubectl is missing)",
};
const PYTHON: Tool = Tool {
    program: "python3",
    install: "apt-get install python3 python3-pip",
};
const SH: Tool = Tool {
    program: "sh",
    install: "apt-get install dash",
};

/// What a finished command left.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `program` in the repository with `args`, `stdin` and extra `env`, its output going to
/// files (no pipe can fill up); panics when it cannot start or is still running after
/// `timeout`.
fn run_program(
    program: &str,
    install: &str,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}\ninstall it: {install}"));
    if let Some(input) = stdin {
        // Dropping the handle closes the pipe: the program sees the end of its input.
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    let status = testkit::wait_or_kill(&mut child, timeout).unwrap_or_else(|| {
        panic!(
            "`{program} {}` was still running after {timeout:?}:\n{}\n{}",
            args.join(" "),
            fs::read_to_string(&out_path).unwrap_or_default(),
            fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    Ran {
        status,
        stdout: fs::read_to_string(&out_path).unwrap(),
        stderr: fs::read_to_string(&err_path).unwrap(),
    }
}

fn run(tool: &Tool, args: &[&str], stdin: Option<&str>, timeout: Duration) -> Ran {
    run_program(tool.program, tool.install, args, stdin, &[], timeout)
}

/// python3 with `args`; a module it cannot import fails the test with `install`.
fn python(args: &[&str], stdin: Option<&str>, install: &str) -> Ran {
    let ran = run(&PYTHON, args, stdin, Duration::from_secs(120));
    assert!(
        !ran.stderr.contains("No module named"),
        "python3 {} cannot import what it needs: {install}\n{}",
        args.join(" "),
        ran.output()
    );
    ran
}

/// `kubernetes-validate --strict` of `yaml` against the schemas of [`KUBERNETES_VERSION`].
fn kubernetes_validate(yaml: &str) -> Ran {
    python(
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            "-",
        ],
        Some(yaml),
        "python3 -m pip install kubernetes-validate",
    )
}

/// `ccstream [--config FILE] check-config` with exactly `env` as its CCSTREAM_* environment;
/// the effective configuration it prints.
fn check_config(
    config_toml: Option<&str>,
    env: &BTreeMap<String, String>,
    what: &str,
) -> toml::Value {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ccstream"));
    if let Some(text) = config_toml {
        let path = dir.path().join("ccstream.toml");
        fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    cmd.arg("check-config")
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("CCSTREAM_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env);
    let out = cmd.output().expect("run ccstream check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ccstream check-config refuses the configuration of {what} ({}):\n{}\nenvironment: {env:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check-config printed no TOML: {e}\n{stdout}"))
}

/// A stand-in for a secret's value: long enough for api.jwt.hs256_secret (32 bytes).
fn dummy_secret(var: &str) -> String {
    format!("test-value-of-{var}-0123456789abcdef0123456789abcdef")
}

// ---------------------------------------------------------------------------------------------
// JSON helpers

/// The value at JSON pointer `ptr` of `v`, or a panic naming `what`.
fn at<'a>(v: &'a Value, ptr: &str, what: &str) -> &'a Value {
    v.pointer(ptr)
        .unwrap_or_else(|| panic!("{what}: no {ptr} in\n{v:#}"))
}

fn str_at<'a>(v: &'a Value, ptr: &str, what: &str) -> &'a str {
    at(v, ptr, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {ptr} is not a string in\n{v:#}"))
}

fn array_at<'a>(v: &'a Value, ptr: &str, what: &str) -> &'a [Value] {
    at(v, ptr, what)
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {ptr} is not an array in\n{v:#}"))
}

/// The element of `items` whose `key` equals `value` (a container, a volume, a port, a
/// variable), or a failure that names what was looked for.
fn item<'a>(items: &'a [Value], key: &str, value: &Value, what: &str) -> &'a Value {
    items
        .iter()
        .find(|i| &i[key] == value)
        .unwrap_or_else(|| panic!("{what}: no element with {key} = {value}"))
}

/// The settings every deployment changes from the embedded defaults: JWT callers, the API on
/// every interface, an external broker.
fn assert_not_laptop_defaults(config: &toml::Value, what: &str) {
    assert_eq!(toml_str(config, "api", "auth"), Some("jwt"), "{what}");
    assert_eq!(
        toml_str(config, "api", "listen"),
        Some(format!("0.0.0.0:{API_PORT}").as_str()),
        "{what}"
    );
    assert_eq!(config["mqtt"]["embedded"].as_bool(), Some(false), "{what}");
}

fn toml_str<'a>(config: &'a toml::Value, section: &str, key: &str) -> Option<&'a str> {
    config.get(section)?.get(key)?.as_str()
}

/// A Kubernetes quantity in bytes ("256Mi", "2Gi", "1048576").
fn bytes(quantity: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ];
    for (suffix, factor) in units {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    quantity
        .parse()
        .unwrap_or_else(|_| panic!("unsupported quantity {quantity}"))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// One kustomize tree, rendered and validated.
struct Rendered {
    tree: &'static str,
    yaml: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name} rendered", self.tree))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }
}

/// `kubectl kustomize deploy/kubernetes/<tree>`, validated with kubernetes-validate --strict
/// and read back as JSON.
fn render(tree: &'static str) -> Rendered {
    let dir = repo().join("deploy/kubernetes").join(tree);
    let ran = run(
        &KUBECTL,
        &["kustomize", dir.to_str().unwrap()],
        None,
        Duration::from_secs(60),
    );
    assert!(
        ran.status.success(),
        "kubectl kustomize {tree} failed:\n{}",
        ran.output()
    );
    let yaml = ran.stdout;

    let validated = kubernetes_validate(&yaml);
    assert!(
        validated.status.success(),
        "{tree} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{}",
        validated.output()
    );

    let json = python(
        &[&script("yaml_to_json.py")],
        Some(&yaml),
        "python3 -m pip install pyyaml",
    );
    assert!(json.status.success(), "{}", json.output());
    let objects: Vec<Value> = serde_json::from_str(&json.stdout).unwrap();
    let passed = validated.output().matches("passed for resource").count();
    assert_eq!(
        passed,
        objects.len(),
        "{tree}: kubernetes-validate passed {passed} of {} objects:\n{}",
        objects.len(),
        validated.output()
    );
    Rendered {
        tree,
        yaml,
        objects,
    }
}

/// The container's port number for `port` (a number or a port name).
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap();
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("port {name} is not declared by the container"))
}

/// The environment the kubelet would give `container` in pod `pod`, with stand-ins for
/// Secrets.
fn pod_env(container: &Value, pod: &str, tree: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_owned()
        } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod.to_owned()
        } else if var["valueFrom"]["secretKeyRef"].is_object() {
            dummy_secret(&name)
        } else {
            panic!("{tree}: the test does not know the value of {var}")
        };
        env.insert(name, value);
    }
    env
}

/// Whether `path` (absolute, or relative to the working directory) lies under `dir`.
fn under(path: &str, dir: &str) -> bool {
    let absolute = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{WORKING_DIR}/{path}")
    };
    absolute.starts_with(&format!("{dir}/"))
}

/// What every tree must meet; returns the effective configuration (`check-config`) of its
/// ccstream.toml with the StatefulSet's environment.
fn assert_kubernetes_requirements(r: &Rendered) -> (toml::Value, &Value) {
    let tree = r.tree;
    // Nothing may turn authentication off, in any object.
    let squeezed: String = r.yaml.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        !squeezed.contains("auth=\"none\"") && !squeezed.contains("auth='none'"),
        "{tree}: api.auth = \"none\" appears in the rendered manifests"
    );
    // No Secret is shipped: operators create them (a value here would be in git).
    assert!(
        r.of_kind("Secret").is_empty(),
        "{tree}: the manifests must not carry Secrets"
    );
    // Everything namespaced lives in the ccstream namespace, which is shipped.
    r.find("Namespace", "ccstream");
    for o in &r.objects {
        if o["kind"] != "Namespace" {
            assert_eq!(
                o["metadata"]["namespace"], "ccstream",
                "{tree}: {} {} is not in the namespace ccstream",
                o["kind"], o["metadata"]["name"]
            );
        }
    }

    let sts = r.find("StatefulSet", "ccstream");
    let what = format!("{tree}: StatefulSet ccstream");
    let what = what.as_str();
    assert_eq!(
        at(sts, "/spec/replicas", what),
        1,
        "{what}: one replica until shared subscriptions exist (issue 11)"
    );
    let pod = at(sts, "/spec/template", what);
    let spec = at(pod, "/spec", what);

    // The headless Service that names the pods.
    let headless = r.find("Service", str_at(sts, "/spec/serviceName", what));
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "{what}: serviceName must name a headless Service"
    );

    // Pod-level hardening.
    assert_eq!(spec["automountServiceAccountToken"], false, "{what}");
    assert_eq!(
        spec["enableServiceLinks"], false,
        "{what}: with service links the kubelet sets CCSTREAM_SERVICE_HOST, CCSTREAM_PORT, ... \
         for the Service ccstream: variables nobody reads"
    );
    let psc = at(spec, "/securityContext", what);
    assert_eq!(psc["runAsNonRoot"], true, "{what}");
    assert_eq!(psc["runAsUser"], UID, "{what}");
    assert_eq!(psc["runAsGroup"], UID, "{what}");
    assert_eq!(psc["fsGroup"], UID, "{what}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    let sa = r.find("ServiceAccount", str_at(spec, "/serviceAccountName", what));
    assert_eq!(sa["automountServiceAccountToken"], false, "{what}");

    // Every container, init containers included.
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect();
    for c in &containers {
        let name = &c["name"];
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{what}: container {name}");
        assert_eq!(
            sc["readOnlyRootFilesystem"], true,
            "{what}: container {name}"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{what}: container {name}"
        );
        assert!(
            sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|c| c == "ALL")),
            "{what}: container {name} must drop ALL capabilities"
        );
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{what}: container {name} adds capabilities"
        );
    }

    let main = containers
        .iter()
        .copied()
        .find(|c| c["name"] == "ccstream")
        .unwrap_or_else(|| panic!("{what}: no container named ccstream"));
    let image = str_at(main, "/image", what);
    assert!(
        image.contains('/') && image.contains(':'),
        "{what}: the kustomization's images entry did not apply: {image}"
    );
    assert_eq!(
        at(main, "/args", what),
        &serde_json::json!(["--config", CONFIG_FILE]),
        "{what}"
    );
    assert_eq!(str_at(main, "/workingDir", what), WORKING_DIR, "{what}");
    assert!(
        main["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["containerPort"] == API_PORT),
        "{what}: container port {API_PORT}"
    );

    // Probes: readiness /readyz, liveness and start-up /healthz, all on the API port.
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = at(main, &format!("/{probe}/httpGet"), what);
        assert_eq!(get["path"], path, "{what}: {probe}");
        assert_eq!(
            resolve_port(main, &get["port"]),
            API_PORT,
            "{what}: {probe}"
        );
    }

    // Prometheus finds /metrics on the API port.
    let annotations = at(pod, "/metadata/annotations", what);
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{what}");
    assert_eq!(
        annotations["prometheus.io/port"],
        API_PORT.to_string(),
        "{what}"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{what}");

    // Resources from BENCHMARKS.md: peak RSS up to ~157 MiB must fit under the limit.
    let requests = at(main, "/resources/requests", what);
    assert!(requests["cpu"].is_string(), "{what}: a CPU request");
    let memory_request = bytes(str_at(requests, "/memory", what));
    let memory_limit = bytes(str_at(main, "/resources/limits/memory", what));
    assert!(
        memory_request >= 160 << 20 && memory_limit >= 2 * memory_request,
        "{what}: memory request {memory_request} / limit {memory_limit}"
    );

    // The MQTT client id is the pod's name: stable across restarts, one per replica.
    let client_id = env_var(main, "CCSTREAM_MQTT__CLIENT_ID")
        .unwrap_or_else(|| panic!("{what}: CCSTREAM_MQTT__CLIENT_ID is not set"));
    assert_eq!(
        client_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "{what}"
    );

    // The per-replica volume from the claim template holds data/; /tmp is an emptyDir; the
    // config file comes from the generated ConfigMap.
    let mounts = array_at(main, "/volumeMounts", what);
    let mount_of = |path: &str| item(mounts, "mountPath", &json!(path), what);
    let data = str_at(mount_of(DATA_DIR), "/name", what);
    assert!(
        array_at(sts, "/spec/volumeClaimTemplates", what)
            .iter()
            .any(|t| t["metadata"]["name"] == data),
        "{what}: {DATA_DIR} must be the volumeClaimTemplate's volume"
    );
    let volumes = array_at(spec, "/volumes", what);
    let volume = |name: &str| item(volumes, "name", &json!(name), what);
    assert!(
        volumes.iter().all(|v| v["name"] != data),
        "{what}: a pod volume shadows the claim template {data}"
    );
    assert!(
        volume(str_at(mount_of("/tmp"), "/name", what))["emptyDir"].is_object(),
        "{what}: /tmp must be an emptyDir (the root filesystem is read-only)"
    );
    let config_dir = Path::new(CONFIG_FILE).parent().unwrap().to_str().unwrap();
    let config_volume = volume(str_at(mount_of(config_dir), "/name", what));
    let config_map = r.find("ConfigMap", str_at(config_volume, "/configMap/name", what));
    let toml_text = str_at(config_map, "/data/ccstream.toml", what);

    // The configuration ccstream would run with, as ccstream itself reads it.
    let env = pod_env(main, FIRST_POD, tree);
    let config = check_config(Some(toml_text), &env, what);
    assert_not_laptop_defaults(&config, what);
    assert_eq!(
        toml_str(&config, "mqtt", "client_id"),
        Some(FIRST_POD),
        "{what}"
    );
    let grace = config["shutdown"]["grace_secs"].as_integer().unwrap();
    let termination = at(spec, "/terminationGracePeriodSeconds", what)
        .as_i64()
        .unwrap();
    assert!(
        termination > grace,
        "{what}: terminationGracePeriodSeconds {termination} must exceed shutdown.grace_secs \
         {grace} (the drain, then the API's last second)"
    );
    // What ccstream writes lands on the per-replica volume.
    let store = toml_str(&config, "store", "url").unwrap();
    if let Some(file) = store.strip_prefix("sqlite://") {
        assert!(under(file, DATA_DIR), "{what}: store.url {store}");
    }
    for (section, key) in [
        ("objects", "spool_dir"),
        ("webhook", "dead_letter_dir"),
        ("webhook", "outbox_dir"),
    ] {
        let path = toml_str(&config, section, key).unwrap();
        assert!(under(path, DATA_DIR), "{what}: {section}.{key} = {path}");
    }
    if toml_str(&config, "objects", "sink") == Some("local") {
        let dir = toml_str(&config, "objects", "dir").unwrap();
        assert!(under(dir, DATA_DIR), "{what}: objects.dir = {dir}");
    }
    // Files ccstream reads are mounted.
    for key in ["ca_file", "client_cert_file", "client_key_file"] {
        if let Some(path) = toml_str(&config, "mqtt", key) {
            assert!(
                mounts
                    .iter()
                    .any(|m| under(path, m["mountPath"].as_str().unwrap())),
                "{what}: mqtt.{key} = {path} is on no mounted volume"
            );
        }
    }

    // The API Service.
    let svc = r.find("Service", "ccstream");
    assert_eq!(svc["spec"]["type"], "ClusterIP", "{tree}: Service ccstream");
    let port = item(
        array_at(svc, "/spec/ports", "Service ccstream"),
        "port",
        &json!(API_PORT),
        &format!("{tree}: Service ccstream"),
    );
    assert_eq!(resolve_port(main, &port["targetPort"]), API_PORT, "{tree}");

    // The disruption budget lets a drain evict the single replica.
    let pdb = r.find("PodDisruptionBudget", "ccstream");
    let replicas = sts["spec"]["replicas"].as_i64().unwrap();
    let allowed = match (
        pdb["spec"]["maxUnavailable"].as_i64(),
        pdb["spec"]["minAvailable"].as_i64(),
    ) {
        (Some(max), None) => max,
        (None, Some(min)) => replicas - min,
        other => {
            panic!("{tree}: the PodDisruptionBudget's maxUnavailable / minAvailable: {other:?}")
        }
    };
    assert!(
        allowed >= 1,
        "{tree}: the PodDisruptionBudget would block every node drain with {replicas} replica(s)"
    );
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], sts["spec"]["selector"]["matchLabels"],
        "{tree}: the PodDisruptionBudget must select the StatefulSet's pods"
    );

    (config, sts)
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
}

#[test]
fn kubernetes_base_renders_validates_and_meets_the_requirements() {
    let r = render("base");
    let (config, _) = assert_kubernetes_requirements(&r);
    assert_eq!(toml_str(&config, "objects", "sink"), Some("local"));
}

#[test]
fn kubernetes_aws_overlay_renders_validates_and_meets_the_requirements() {
    let r = render("overlays/aws");
    let (config, sts) = assert_kubernetes_requirements(&r);
    // AWS IoT over TLS with a client certificate, S3 with the pod's IAM role, JSON logs.
    let url = toml_str(&config, "mqtt", "url").unwrap();
    assert!(
        url.starts_with("mqtts://") && url.ends_with(":8883"),
        "mqtt.url {url}"
    );
    for key in ["ca_file", "client_cert_file", "client_key_file"] {
        assert!(toml_str(&config, "mqtt", key).is_some(), "mqtt.{key}");
    }
    assert_eq!(toml_str(&config, "objects", "sink"), Some("s3"));
    assert!(toml_str(&config, "objects", "bucket").is_some());
    assert!(toml_str(&config, "objects", "region").is_some());
    assert_eq!(toml_str(&config, "log", "format"), Some("json"));
    let account = str_at(sts, "/spec/template/spec/serviceAccountName", "aws");
    let sa = r.find("ServiceAccount", account);
    let role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .as_str()
        .unwrap_or_else(|| panic!("IRSA annotation missing on ServiceAccount {account}"));
    assert!(role.starts_with("arn:aws:iam::"), "{role}");
    // IRSA's credentials come from the webhook's token, not from static keys.
    let main = &sts["spec"]["template"]["spec"]["containers"][0];
    assert!(env_var(main, "AWS_ACCESS_KEY_ID").is_none());
    // The TLS files come from a Secret.
    let volumes = array_at(sts, "/spec/template/spec/volumes", "aws");
    assert!(volumes
        .iter()
        .any(|v| v["secret"]["secretName"].is_string()));
}

#[test]
fn kubernetes_self_hosted_overlay_renders_validates_and_meets_the_requirements() {
    let r = render("overlays/self-hosted");
    let (config, sts) = assert_kubernetes_requirements(&r);
    assert_eq!(toml_str(&config, "objects", "sink"), Some("s3"));
    assert!(toml_str(&config, "objects", "endpoint").is_some());
    assert_eq!(config["objects"]["path_style"].as_bool(), Some(true));
    // Broker and store credentials come from Secrets, never as literal values.
    let main = &sts["spec"]["template"]["spec"]["containers"][0];
    for name in [
        "CCSTREAM_MQTT__USERNAME",
        "CCSTREAM_MQTT__PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        let var = env_var(main, name).unwrap_or_else(|| panic!("{name} is not set"));
        assert!(
            var["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{name} must come from a Secret: {var}"
        );
    }
    assert!(toml_str(&config, "mqtt", "username").is_some());
}

#[test]
fn kubernetes_validate_refuses_an_unknown_field() {
    // The validator is live: a misspelt field is an error under --strict.
    let ran = kubernetes_validate(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  portz: []\n",
    );
    assert!(!ran.status.success(), "{}", ran.output());
    assert!(ran.output().contains("portz"), "{}", ran.output());
}

// ---------------------------------------------------------------------------------------------
// ECS

fn ecs_file(name: &str) -> Value {
    let path = repo().join("deploy/ecs").join(name);
    serde_json::from_str(&fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether Fargate offers `cpu` units with `memory` MiB.
fn fargate_size_exists(cpu: u64, memory: u64) -> bool {
    let (min, max, step) = match cpu {
        256 => return [512, 1024, 2048].contains(&memory),
        512 => (1024, 4096, 1024),
        1024 => (2048, 8192, 1024),
        2048 => (4096, 16384, 1024),
        4096 => (8192, 30720, 1024),
        8192 => (16384, 61440, 4096),
        16384 => (32768, 122880, 8192),
        _ => return false,
    };
    (min..=max).contains(&memory) && (memory - min).is_multiple_of(step)
}

/// The environment ECS would give `container`, with stand-ins for its secrets.
fn task_env(container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["environment"].as_array().into_iter().flatten() {
        env.insert(
            var["name"].as_str().unwrap().to_owned(),
            var["value"].as_str().unwrap().to_owned(),
        );
    }
    for var in container["secrets"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap();
        env.insert(name.to_owned(), dummy_secret(name));
    }
    env
}

fn container<'a>(task: &'a Value, name: &str) -> &'a Value {
    let containers = array_at(task, "/containerDefinitions", "task definition");
    item(containers, "name", &json!(name), "task definition")
}

#[test]
fn ecs_task_definition_meets_the_requirements() {
    let task = ecs_file("task-definition.json");
    let what = "task-definition.json";
    assert!(
        array_at(&task, "/requiresCompatibilities", what)
            .iter()
            .any(|c| c == "FARGATE"),
        "{what}: Fargate"
    );
    assert_eq!(task["networkMode"], "awsvpc", "{what}");
    let cpu: u64 = str_at(&task, "/cpu", what).parse().unwrap();
    let memory: u64 = str_at(&task, "/memory", what).parse().unwrap();
    assert!(
        fargate_size_exists(cpu, memory),
        "{what}: Fargate has no task size of {cpu} CPU units with {memory} MiB"
    );
    assert!(str_at(&task, "/taskRoleArn", what).starts_with("arn:aws:iam::"));
    assert!(str_at(&task, "/executionRoleArn", what).starts_with("arn:aws:iam::"));
    let ephemeral_gib = at(&task, "/ephemeralStorage/sizeInGiB", what)
        .as_u64()
        .unwrap();
    assert!(
        (21..=200).contains(&ephemeral_gib),
        "{what}: ephemeralStorage"
    );

    // Every container: non-root, read-only root, no capabilities, no secret in plain text.
    for c in array_at(&task, "/containerDefinitions", what) {
        let name = &c["name"];
        assert_eq!(
            c["readonlyRootFilesystem"], true,
            "{what}: container {name}"
        );
        assert_eq!(c["privileged"], false, "{what}: container {name}");
        let user = str_at(c, "/user", what);
        assert_eq!(
            user.split(':').next(),
            Some(UID.to_string().as_str()),
            "{what}: container {name} runs as {user}"
        );
        assert!(
            c["linuxParameters"]["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|c| c == "ALL")),
            "{what}: container {name} must drop ALL capabilities"
        );
        assert_eq!(
            c["logConfiguration"]["logDriver"], "awslogs",
            "{what}: {name}"
        );
        for var in c["environment"].as_array().into_iter().flatten() {
            let var_name = var["name"].as_str().unwrap();
            assert!(
                !["SECRET", "PASSWORD", "ACCESS_KEY", "PEM"]
                    .iter()
                    .any(|s| var_name.contains(s)),
                "{what}: {var_name} belongs in `secrets`, not in `environment`"
            );
        }
    }

    let main = container(&task, "ccstream");
    assert_eq!(main["essential"], true, "{what}");
    assert_eq!(main["workingDirectory"], WORKING_DIR, "{what}");
    assert!(
        array_at(main, "/portMappings", what)
            .iter()
            .any(|p| p["containerPort"] == API_PORT),
        "{what}: port {API_PORT}"
    );
    // The spool lives on the task's ephemeral storage: a bind mount (no EFS, no Docker volume).
    let mount = item(
        array_at(main, "/mountPoints", what),
        "containerPath",
        &json!(DATA_DIR),
        what,
    );
    let volume = item(
        array_at(&task, "/volumes", what),
        "name",
        &mount["sourceVolume"],
        what,
    );
    assert_eq!(
        volume.as_object().unwrap().len(),
        1,
        "{what}: the data volume must be a plain bind mount on the task's storage: {volume}"
    );

    // The configuration ccstream would run with: environment only, no file.
    assert!(
        main["command"].is_null(),
        "{what}: no command, so no --config"
    );
    let env = task_env(main);
    let config = check_config(None, &env, what);
    assert_not_laptop_defaults(&config, what);
    assert!(
        toml_str(&config, "mqtt", "client_id").is_some(),
        "{what}: a fixed MQTT client id (a task's host name changes with every task)"
    );
    assert_eq!(toml_str(&config, "objects", "sink"), Some("s3"), "{what}");
    assert_eq!(toml_str(&config, "log", "format"), Some("json"), "{what}");
    for (section, key) in [
        ("objects", "spool_dir"),
        ("webhook", "dead_letter_dir"),
        ("webhook", "outbox_dir"),
    ] {
        let path = toml_str(&config, section, key).unwrap();
        assert!(under(path, DATA_DIR), "{what}: {section}.{key} = {path}");
    }
    let spool_max = config["objects"]["spool_max_bytes"].as_integer().unwrap() as u64;
    let outbox_max = config["webhook"]["outbox_max_bytes"].as_integer().unwrap() as u64;
    assert!(
        spool_max + outbox_max + (4 << 30) <= ephemeral_gib << 30,
        "{what}: objects.spool_max_bytes {spool_max} and webhook.outbox_max_bytes {outbox_max} \
         leave less than 4 GiB of the {ephemeral_gib} GiB ephemeral storage for the image, the \
         rule store and the rest"
    );

    // Health check: `ccstream healthcheck` (liveness, /healthz), which reads api.listen from
    // the same environment; ECS waits longer than the probe's own timeout. Not `--ready`: ECS
    // replaces a task whose check fails, and with it the ephemeral storage holding the spool,
    // so a broker or S3 outage (when /readyz is 503) would cost acknowledged observations.
    let health = at(main, "/healthCheck", what);
    assert_eq!(
        health["command"],
        serde_json::json!(["CMD", "ccstream", "healthcheck"]),
        "{what}"
    );
    let secs = |k: &str| health[k].as_u64().unwrap();
    assert!((5..=300).contains(&secs("interval")), "{what}: interval");
    assert!(
        (HEALTHCHECK_TIMEOUT_SECS + 1..=60).contains(&secs("timeout")),
        "{what}: timeout"
    );
    assert!((1..=10).contains(&secs("retries")), "{what}: retries");
    assert!(secs("startPeriod") <= 300, "{what}: startPeriod");

    // SIGTERM, then stopTimeout for the drain before SIGKILL (at most 120 s on Fargate).
    let grace = config["shutdown"]["grace_secs"].as_integer().unwrap() as u64;
    let stop = main["stopTimeout"].as_u64().unwrap();
    assert!(
        stop >= grace + 10 && stop <= 120,
        "{what}: stopTimeout {stop} must cover shutdown.grace_secs {grace} plus a margin, \
         within Fargate's 120"
    );

    // The containers ccstream waits for must succeed first, and not hold the task up.
    for dep in main["dependsOn"].as_array().into_iter().flatten() {
        let init = container(&task, dep["containerName"].as_str().unwrap());
        assert_eq!(dep["condition"], "SUCCESS", "{what}: {dep}");
        assert_eq!(init["essential"], false, "{what}: {}", init["name"]);
    }
}

#[test]
fn ecs_tls_init_container_writes_the_files_ccstream_reads() {
    let task = ecs_file("task-definition.json");
    let init = container(&task, "mqtt-tls-files");
    let main = container(&task, "ccstream");
    assert_eq!(init["entryPoint"], serde_json::json!(["/bin/sh", "-c"]));
    let script_text = str_at(init, "/command/0", "mqtt-tls-files");
    let init_env = task_env(init);
    let tls_dir = &init_env["TLS_DIR"];
    assert!(
        under(tls_dir, DATA_DIR),
        "TLS_DIR {tls_dir} must be on the shared volume"
    );
    let main_env = task_env(main);

    // Run the script as ECS would, with TLS_DIR moved into a temporary directory.
    let tmp = tempfile::tempdir().unwrap();
    let local_dir = tmp.path().join("mqtt-tls");
    let mut env: Vec<(String, String)> = init_env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                format!("-----BEGIN TEST-----\n{v}\n-----END TEST-----"),
            )
        })
        .collect();
    env.retain(|(k, _)| k != "TLS_DIR");
    env.push(("TLS_DIR".into(), local_dir.to_string_lossy().into_owned()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ran = run_program(
        SH.program,
        SH.install,
        &["-c", script_text],
        None,
        &env_refs,
        Duration::from_secs(30),
    );
    assert!(ran.status.success(), "{}", ran.output());

    use std::os::unix::fs::PermissionsExt;
    let mut files = 0;
    for key in [
        "CCSTREAM_MQTT__CA_FILE",
        "CCSTREAM_MQTT__CLIENT_CERT_FILE",
        "CCSTREAM_MQTT__CLIENT_KEY_FILE",
    ] {
        let path = &main_env[key];
        let rest = path
            .strip_prefix(tls_dir.as_str())
            .unwrap_or_else(|| panic!("{key} = {path} is not under TLS_DIR {tls_dir}"));
        let local = local_dir.join(rest.trim_start_matches('/'));
        let text = fs::read_to_string(&local)
            .unwrap_or_else(|e| panic!("{key}: the script wrote no {}: {e}", local.display()));
        assert!(text.starts_with("-----BEGIN TEST-----\n"), "{key}: {text}");
        let mode = fs::metadata(&local).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}: {} has mode {mode:o}", local.display());
        files += 1;
    }
    assert_eq!(files, 3);
}

#[test]
fn ecs_service_runs_one_task_and_never_two_at_once() {
    let service = ecs_file("service.json");
    let task = ecs_file("task-definition.json");
    let what = "service.json";
    assert_eq!(service["taskDefinition"], task["family"], "{what}");
    assert_eq!(
        service["desiredCount"], 1,
        "{what}: one task until shared subscriptions exist (issue 11)"
    );
    assert_eq!(service["launchType"], "FARGATE", "{what}");
    // Two tasks with the same MQTT client id would throw each other off the broker: a
    // deployment stops the old task before it starts the new one.
    assert_eq!(
        at(&service, "/deploymentConfiguration/maximumPercent", what),
        100,
        "{what}"
    );
    assert_eq!(
        at(
            &service,
            "/deploymentConfiguration/minimumHealthyPercent",
            what
        ),
        0,
        "{what}"
    );
}

/// The real Python interpreter (not a pyenv shim), so that the pid the test kills is moto's.
fn python_executable() -> String {
    let ran = python(
        &["-c", "import sys, moto.server; print(sys.executable)"],
        None,
        "python3 -m pip install 'moto[server]'",
    );
    assert!(ran.status.success(), "{}", ran.output());
    ran.stdout.trim().to_owned()
}

/// moto in server mode on a free port of 127.0.0.1; killed when dropped.
struct Moto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port();
        let log_path = dir.path().join("moto.log");
        let log = File::create(&log_path).unwrap();
        let mut child = Command::new(python_executable())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto");
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "moto exited with {status}:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "moto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ecs_files_match_the_aws_api_model_and_register_in_moto() {
    let moto = Moto::start();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let dir = repo().join("deploy/ecs");
    let ran = python(
        &[&script("validate_ecs.py"), dir.to_str().unwrap(), &endpoint],
        None,
        "python3 -m pip install boto3 'moto[server]'",
    );
    assert!(
        ran.status.success() && ran.stdout.contains("validate_ecs: OK"),
        "validate_ecs.py failed:\n{}",
        ran.output()
    );
}

// ---------------------------------------------------------------------------------------------
// checkov

/// The checkov executable: on PATH, or where scripts/setup-test-deps.sh puts its venv.
fn checkov() -> PathBuf {
    let venv = PathBuf::from("/opt/ccstream-test-tools/checkov/bin/checkov");
    let on_path = Command::new("checkov")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        PathBuf::from("checkov")
    } else if venv.exists() {
        venv
    } else {
        panic!(
            "checkov not found: run scripts/setup-test-deps.sh (it installs checkov from PyPI \
             into {} and links /usr/local/bin/checkov)",
            venv.parent().unwrap().parent().unwrap().display()
        )
    }
}

/// Runs checkov on `target` (`-d DIR` or `-f FILE`) with `frameworks`, skipping only `skips`;
/// fails on any other failed check. `min_passed` guards against a scan that found nothing.
fn assert_checkov_passes(
    target: &[&str],
    frameworks: &[&str],
    skips: &[(&str, &str)],
    min_passed: usize,
) {
    let skip_list = skips
        .iter()
        .map(|(id, _)| *id)
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<&str> = target.to_vec();
    args.push("--framework");
    args.extend_from_slice(frameworks);
    // --skip-download: offline, no call to the vendor's platform.
    args.extend_from_slice(&[
        "--compact",
        "--quiet",
        "--skip-download",
        "--skip-check",
        &skip_list,
    ]);
    let program = checkov();
    let ran = run_program(
        program.to_str().unwrap(),
        "scripts/setup-test-deps.sh",
        &args,
        None,
        &[],
        Duration::from_secs(300),
    );
    assert!(
        ran.status.success(),
        "checkov {} found failed checks (fix them, or add them to the skip list in \
         tests/deploy.rs with a reason):\n{}",
        args.join(" "),
        ran.output()
    );
    let passed: usize = ran
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Passed checks: "))
        .filter_map(|rest| rest.split(',').next()?.trim().parse::<usize>().ok())
        .sum();
    assert!(
        passed >= min_passed,
        "checkov {} passed only {passed} checks (at least {min_passed} expected): did it scan \
         anything?\n{}",
        args.join(" "),
        ran.output()
    );
}

#[test]
fn checkov_passes_on_the_kubernetes_manifests() {
    // The kustomize framework checks what each tree renders to. The kubernetes framework is
    // left out: it would also check the overlays' patch files on their own, as if each were a
    // whole StatefulSet.
    let deploy = repo().join("deploy");
    assert_checkov_passes(
        &["-d", deploy.to_str().unwrap()],
        &["kustomize", "secrets"],
        CHECKOV_SKIPS_DEPLOY,
        100,
    );
}

#[test]
fn checkov_passes_on_the_dockerfile() {
    let dockerfile = repo().join("Dockerfile");
    assert!(dockerfile.exists(), "no Dockerfile at the repository root");
    assert_checkov_passes(
        &["-f", dockerfile.to_str().unwrap()],
        &["dockerfile", "secrets"],
        CHECKOV_SKIPS_DOCKERFILE,
        20,
    );
}
