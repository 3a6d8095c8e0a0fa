//! The Kubernetes deployment (config/kubernetes/): the ConfigMap's configuration, mounted
//! as the kubelet mounts it beside the Secret that `certs init` output fills, validates
//! through the real binary; the Deployment agrees with it and with the Dockerfile; and an
//! endpoint given as a DNS name follows a changed resolution, as a Service's does.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use splitproxy::config;

use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of every manifest under config/kubernetes/ (not its examples/, which
/// `kubectl apply -f config/kubernetes/` does not apply either).
fn manifests() -> Vec<Value> {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("config/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v = <Value as serde::Deserialize>::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in config/kubernetes/");
    found[0]
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn splitproxy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args(args)
        .output()
        .expect("run splitproxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Mount `files` (path in the volume -> content) at `dir` the way the kubelet's atomic
/// writer does: a timestamped folder, `..data` pointing at it, and one symlink per
/// top-level entry through `..data`.
fn kubelet_mount(dir: &Path, files: &[(String, Vec<u8>)]) {
    let stamp = "..2026_12_02_03_00_00.000000001";
    for (path, content) in files {
        let file = dir.join(stamp).join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    std::os::unix::fs::symlink(stamp, dir.join("..data")).unwrap();
    let mut tops: Vec<&str> = files
        .iter()
        .map(|(p, _)| p.split('/').next().unwrap())
        .collect();
    tops.sort();
    tops.dedup();
    for top in tops {
        std::os::unix::fs::symlink(format!("..data/{top}"), dir.join(top)).unwrap();
    }
}

#[test]
fn the_configmap_validates_mounted_with_the_certs_init_secret_and_the_deployment_agrees() {
    let docs = manifests();
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // the volume: the ConfigMap's entries and the Secret's items, projected into one folder
    let mount = &container["volumeMounts"][0];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let sources = volume["projected"]["sources"].as_sequence().unwrap();
    let cm_name = str_of(&sources[0]["configMap"]["name"]);
    let secret = &sources[1]["secret"];
    let configmap = kind(&docs, "ConfigMap");
    assert_eq!(str_of(&configmap["metadata"]["name"]), cm_name);

    // the Secret as `certs init` writes it: each item's key is one of its files
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let (code, _, stderr) = splitproxy(&["certs", "init", "--dir", certs.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (key, value) in configmap["data"].as_mapping().unwrap() {
        files.push((str_of(key).to_string(), str_of(value).as_bytes().to_vec()));
    }
    let mut keys = Vec::new();
    for item in secret["items"].as_sequence().unwrap() {
        let key = str_of(&item["key"]);
        let content = std::fs::read(certs.join(key))
            .unwrap_or_else(|e| panic!("certs init wrote no {key}: {e}"));
        files.push((str_of(&item["path"]).to_string(), content));
        keys.push(key.to_string());
    }
    assert_eq!(keys, ["ca.pem", "server.pem", "server-key.pem"]);
    // the Secret never holds the CA's key
    assert!(!keys.iter().any(|k| k.contains("ca-key")));
    // the documented command creates exactly these keys
    let command = format!(
        "kubectl create secret generic {} {}",
        str_of(&secret["name"]),
        keys.iter()
            .map(|k| format!("--from-file=certs/{k}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains(&command), "README.md lacks `{command}`");

    let mounted = work.path().join("etc-splitproxy");
    std::fs::create_dir(&mounted).unwrap();
    kubelet_mount(&mounted, &files);

    // the container's command line reads that folder, as the image's default does
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(args, ["run", "--config", str_of(&mount["mountPath"])]);
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let cmd = format!(
        "CMD [{}]",
        args.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(dockerfile.contains(&cmd), "Dockerfile lacks {cmd}");
    // distroless's nonroot user is 65532
    assert!(dockerfile.contains("USER nonroot:nonroot"));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);

    // the real code path: everything `run` loads, TLS material included
    let (code, stdout, stderr) = splitproxy(&["validate", "--config", mounted.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("listen 0.0.0.0:8443 (mTLS, clientAuth require), admin 0.0.0.0:9901"),
        "{stdout}"
    );
    assert!(
        stdout.contains("split default/my-website (my-website, "),
        "{stdout}"
    );
    let backend = |name: &str| -> &str {
        stdout
            .lines()
            .find(|l| l.contains(&format!("-> {name} ")))
            .unwrap_or_else(|| panic!("no backend {name}: {stdout}"))
    };
    assert!(backend("my-website-v1").contains("weight 95 "), "{stdout}");
    assert!(backend("my-website-v2").contains("weight 5 "), "{stdout}");
    assert!(backend("my-website-v2").contains(" 5.00%"), "{stdout}");

    // the probes and ports reach what the Proxy document serves
    let cfg = config::read(&mounted)
        .result
        .unwrap_or_else(|e| panic!("{e:?}"));
    let proxy = &cfg.proxy;
    assert!(
        !proxy.admin.ip().is_loopback(),
        "the kubelet probes the pod IP"
    );
    let port = |name: &str| -> u16 {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}")) as u16
    };
    assert_eq!(port("admin"), proxy.admin.port());
    assert_eq!(port("https"), proxy.listen.port());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        assert_eq!(container[probe]["httpGet"]["port"], "admin");
    }
    // a rollout loses nothing: the kubelet waits out the whole drain
    let drain = proxy.shutdown.delay + proxy.shutdown.grace;
    assert!(drain > Duration::ZERO && proxy.shutdown.delay > Duration::ZERO);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) > drain,
        "terminationGracePeriodSeconds {grace} <= shutdown.delay + shutdown.grace {drain:?}"
    );
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    for r in ["requests", "limits"] {
        assert!(container["resources"][r].is_mapping(), "resources.{r}");
    }

    // the Service and the PodDisruptionBudget select these pods
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = kind(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));

    // the HTTPRoute example (loaded by the Gateway API tests) names services of this Proxy
    let text =
        std::fs::read_to_string(root().join("config/kubernetes/examples/httproute.yaml")).unwrap();
    let route: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(route["kind"], "HTTPRoute");
    for rule in route["spec"]["rules"].as_sequence().unwrap() {
        for backend in rule["backendRefs"].as_sequence().unwrap() {
            let name = str_of(&backend["name"]);
            assert!(proxy.services.contains_key(name), "httproute.yaml: {name}");
        }
    }

    // ... and loads in place of split.yaml, as its comment tells: the same 95/5 and the
    // testers' header rule first (more header matches on the same path)
    let with_route = work.path().join("etc-splitproxy-httproute");
    std::fs::create_dir(&with_route).unwrap();
    let mut route_files: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter(|(name, _)| name != "split.yaml")
        .cloned()
        .collect();
    assert_eq!(
        route_files.len(),
        files.len() - 1,
        "split.yaml in the ConfigMap"
    );
    route_files.push(("httproute.yaml".into(), text.into_bytes()));
    kubelet_mount(&with_route, &route_files);
    let (code, stdout, stderr) =
        splitproxy(&["validate", "--config", with_route.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let cfg = config::read(&with_route)
        .result
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(cfg.splits.is_empty());
    assert_eq!(cfg.httproutes.len(), 1, "{stdout}");
    assert!(
        stdout.contains("httproute default/my-website rules[0]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("httproute default/my-website rules[1]"),
        "{stdout}"
    );
    assert!(stdout.contains("weight 95 "), "{stdout}");
}

// === a DNS-named endpoint follows its resolution ===

/// A backend on exactly `addr` that names itself in `x-backend`.
async fn named_backend(addr: SocketAddr, name: &'static str) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let resp = http::Response::builder()
                        .header("x-backend", name)
                        .body(http_body_util::Full::new(bytes::Bytes::from(name)))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(())
}

/// Backend A on 127.0.0.1:P and backend B on 127.0.0.2:P, for one port P.
async fn backends_on_one_port() -> u16 {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let a = named_backend(SocketAddr::from(([127, 0, 0, 1], port)), "a").await;
        if a.is_err() {
            continue;
        }
        if named_backend(SocketAddr::from(([127, 0, 0, 2], port)), "b")
            .await
            .is_ok()
        {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Kills the proxy however the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `unshare` with a private mount namespace: as root directly, otherwise inside a user
/// namespace that maps the caller to root (what lets it bind-mount).
fn unshare() -> Command {
    let mut cmd = Command::new("unshare");
    // SAFETY: geteuid has no preconditions and cannot fail
    if unsafe { libc::geteuid() } != 0 {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--propagation", "private"]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_named_endpoint_follows_a_changed_resolution() {
    // This test needs a private /etc/hosts, which only a mount namespace gives: say so
    // plainly where there is none, rather than pass without testing anything.
    let probe = unshare()
        .args(["sh", "-c", "mount --bind /etc/hosts /etc/hosts"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test runs splitproxy under `unshare --mount` with its own /etc/hosts, and unshare failed here ({}): {}; run it as root or where unprivileged user namespaces are allowed",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "this test runs splitproxy under `unshare --mount` (util-linux) with its own /etc/hosts: cannot run unshare: {e}"
        ),
    }

    let port = backends_on_one_port().await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 some-name.test\n").unwrap();
    let yaml = "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: dns\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  exposeBackend: true\n  services:\n    web: [\"some-name.test:PORT\"]\n".replace("PORT", &port.to_string())
        + &split_doc("site", "site", &[("web", 1)]);
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).unwrap();

    let child = unshare()
        .args([
            "sh",
            "-c",
            // the bind mount follows the file's inode: the test rewrites it in place
            "mount --bind \"$0\" /etc/hosts && exec \"$1\" run --config \"$2\"",
            hosts.to_str().unwrap(),
            env!("CARGO_BIN_EXE_splitproxy"),
            config.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let mut proxy = Killed(child);
    let (addr, _) = serving(&mut proxy.0);
    let url = format!("http://{addr}/");

    let c = client();
    // resolved at load: 127.0.0.1, backend A
    for _ in 0..5 {
        let a = get(&c, &url, "site").await;
        assert_eq!((a.status.as_u16(), a.backend()), (200, "a"), "{}", a.body);
    }

    // rewrite the file in place (a rename would leave the bind mount on the old inode)
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&hosts);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&hosts)
        .unwrap();
    f.write_all(b"127.0.0.1 localhost\n127.0.0.2 some-name.test\n")
        .unwrap();
    drop(f);
    assert_eq!(inode(&hosts), before);

    // the next re-resolution (every DNS_REFRESH, 5s) moves the endpoint to B
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = get(&c, &url, "site").await;
        assert_eq!(a.status, 200, "{}", a.body);
        if a.backend() == "b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still on backend A 30s after some-name.test moved to 127.0.0.2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and A is no longer an endpoint at all
    for _ in 0..20 {
        assert_eq!(get(&c, &url, "site").await.backend(), "b");
    }
}
