//! `cnx serve` driven by a real HTTP client (ureq) on loopback: every route, every error
//! code, results bit-equal to `cnx classify` / `cnx embed` whatever the batch, dynamic batching,
//! a full queue, a client that goes away, and shutdown with requests in flight. Every wait is
//! bounded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

#[path = "../../tests/src/digits.rs"]
mod digits;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> PathBuf {
    repo().join("tests/fixtures/atto-224-b2")
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/images").join(name)).unwrap()
}

const IMAGES: [&str; 3] = ["chelsea.jpg", "rocket_exif6.jpg", "camera_grey.png"];

/// A running server; killed (SIGKILL) if the test ends without stopping it.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_model(&model(), extra, env)
    }

    fn start_model(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cnx"))
            .envs(env.iter().copied())
            .args(["serve", "--model"])
            .arg(model)
            .args(["--port", "0", "--backend", "interp"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let base = loop {
            assert!(Instant::now() < deadline, "the server did not start");
            let line = lines
                .next()
                .expect("the server printed its address")
                .unwrap();
            if let Some(at) = line.find("http://") {
                let rest = &line[at..];
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status (bounded wait).
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// POSTs `body` with `content_type`; (status, JSON body, Retry-After).
fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value, Option<String>) {
    let response = match agent()
        .post(url)
        .set("Content-Type", content_type)
        .send_bytes(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let retry = response.header("Retry-After").map(str::to_string);
    let json = response.into_json().unwrap_or(serde_json::Value::Null);
    (status, json, retry)
}

/// Sends `head` (a request without its body) on a new connection; the status and the body of
/// the answer (read up to its Content-Length; every read bounded by a timeout).
fn raw_head(addr: &str, head: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((headers, body)) = text.split_once("\r\n\r\n") {
            let len = headers
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body.to_string());
            }
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn multipart(images: &[Vec<u8>], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "cnx-test-boundary";
    let mut body = Vec::new();
    for (i, img) in images.iter().enumerate() {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image{i}\"; filename=\"{i}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(img);
        body.extend_from_slice(b"\r\n");
    }
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `cnx classify --json` and `cnx embed` of the test images, offline (same backend).
fn offline() -> (Vec<serde_json::Value>, Vec<f32>) {
    let files: Vec<PathBuf> = IMAGES
        .iter()
        .map(|n| repo().join("tests/fixtures/images").join(n))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args(["classify", "--json", "--backend", "interp", "--model"])
        .arg(model())
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success());
    let top: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["top"].clone())
        .collect();
    let embeddings = cnx_to_npy(&["embed", "--backend", "interp"], &files);
    (top, embeddings.data().to_vec())
}

/// `cnx ARGS --model MODEL FILES... --output OUT.npy`, and the array it wrote.
fn cnx_to_npy(args: &[&str], files: &[PathBuf]) -> cnx_runtime::Tensor {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("out.npy");
    let out = Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args(args)
        .arg("--model")
        .arg(model())
        .args(files)
        .arg("--output")
        .arg(&npy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cnx_cli::io::read_npy(&npy).unwrap()
}

/// The server's `[{"label", "score", "index"}]` as `cnx classify --json`'s
/// `[{"index", "label", "probability"}]`.
fn as_offline(answer: &serde_json::Value) -> serde_json::Value {
    serde_json::Value::Array(
        answer
            .as_array()
            .unwrap()
            .iter()
            .map(|p| serde_json::json!({"index": p["index"], "label": p["label"], "probability": p["score"]}))
            .collect(),
    )
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn routes_results_batching_and_errors() {
    let (top, embeddings) = offline();
    let hidden = embeddings.len() / IMAGES.len();
    let server = Server::start(&[
        "--max-batch",
        "4",
        "--max-delay-ms",
        "200",
        "--max-body-mb",
        "1",
    ]);
    let (status, body) = get(&server.url("/health"));
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    // Raw bytes, JSON with base64, multipart: the same numbers as offline.
    let (status, answer, _) = post(&server.url("/v1/classify"), "image/jpeg", &image(IMAGES[0]));
    assert_eq!(status, 200);
    assert_eq!(as_offline(&answer), top[0]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(image(IMAGES[1]));
    let json = serde_json::json!({"image": b64, "top_k": 5}).to_string();
    let (status, answer, _) = post(
        &server.url("/v1/classify"),
        "application/json",
        json.as_bytes(),
    );
    assert_eq!(status, 200);
    assert_eq!(as_offline(&answer), top[1]);
    let all: Vec<Vec<u8>> = IMAGES.iter().map(|n| image(n)).collect();
    let (ct, body) = multipart(&all, &[("top_k", "2")]);
    let (status, answer, _) = post(&server.url("/v1/classify"), &ct, &body);
    assert_eq!(status, 200);
    for (i, one) in answer.as_array().unwrap().iter().enumerate() {
        assert_eq!(
            as_offline(one).as_array().unwrap()[..],
            top[i].as_array().unwrap()[..2]
        );
    }
    let (ct, body) = multipart(&all, &[]);
    let (status, answer, _) = post(&server.url("/v1/embed"), &ct, &body);
    assert_eq!(status, 200);
    for (i, one) in answer.as_array().unwrap().iter().enumerate() {
        let row = &embeddings[i * hidden..(i + 1) * hidden];
        assert_eq!(floats(&one["embedding"]), row, "{}", IMAGES[i]);
    }
    let json = serde_json::json!({"image": b64, "normalize": true}).to_string();
    let (status, answer, _) = post(
        &server.url("/v1/embed"),
        "application/json",
        json.as_bytes(),
    );
    assert_eq!(status, 200);
    let unit = floats(&answer["embedding"]);
    let norm: f64 = unit
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-6);

    // Many clients at once: batched together, each result as offline.
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = server.url("/v1/embed");
            let img = image(IMAGES[i % 3]);
            std::thread::spawn(move || (i, post(&url, "application/octet-stream", &img)))
        })
        .collect();
    for client in clients {
        let (i, (status, answer, _)) = client.join().unwrap();
        assert_eq!(status, 200);
        let k = i % 3;
        assert_eq!(
            floats(&answer["embedding"]),
            &embeddings[k * hidden..(k + 1) * hidden]
        );
    }
    let (_, metrics) = get(&server.url("/metrics"));
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (batches, images) = (value("cnx_batch_size_count"), value("cnx_batch_size_sum"));
    // 17 images (1 + 1 + 3 + 3 + 1 + 8), in fewer batches than images: requests were batched
    // together.
    assert_eq!(images, 17.0);
    assert!(batches < images, "{batches} batches for {images} images");
    assert!(metrics.contains("cnx_requests_total{route=\"embed\",status=\"200\"} 10"));
    for name in [
        "cnx_queue_wait_seconds_count",
        "cnx_inference_seconds_count",
        "cnx_images_per_second",
    ] {
        assert!(metrics.contains(name), "{name}");
    }

    // Errors: JSON, with the right status.
    let (status, answer, _) = post(&server.url("/v1/classify"), "image/png", b"not an image");
    assert_eq!(status, 400);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("not a recognised image format"));
    let (status, answer, _) = post(&server.url("/v1/classify"), "application/json", b"{");
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("JSON"));
    // Over --max-body-mb: refused from the Content-Length, before the body is read (a
    // client still writing it could see a broken pipe: the test sends the headers only).
    let addr = server.base.trim_start_matches("http://").to_string();
    let (status, body) = raw_head(
        &addr,
        &format!(
            "POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
            2 << 20
        ),
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = get(&server.url("/v2/nothing"));
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""));
    let (status, body) = get(&server.url("/v1/classify"));
    assert_eq!(status, 405);
    assert!(body.contains("\"error\""));

    // A client that sends a request and goes away does not stall anyone.
    let img = image(IMAGES[0]);
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        img.len()
    )
    .unwrap();
    stream.write_all(&img).unwrap();
    drop(stream);
    let start = Instant::now();
    let (status, _, _) = post(&server.url("/v1/classify"), "image/jpeg", &img);
    assert_eq!(status, 200);
    assert!(start.elapsed() < Duration::from_secs(30));

    assert!(server.stop().success());
}

/// A full queue answers 503 with Retry-After (one image per batch, a queue of 8: a second
/// request of 8 images cannot fit while the first is being run); every answer is 200 or 503.
#[test]
fn full_queue_answers_503_with_retry_after() {
    let server = Server::start(&["--max-batch", "1", "--queue", "8", "--max-delay-ms", "0"]);
    let eight: Vec<Vec<u8>> = (0..8).map(|i| image(IMAGES[i % 3])).collect();
    let (ct, body) = multipart(&eight, &[]);
    let mut refused = false;
    for _attempt in 0..5 {
        let requests: Vec<_> = (0..3)
            .map(|_| {
                let (url, ct, body) = (server.url("/v1/embed"), ct.clone(), body.clone());
                std::thread::spawn(move || post(&url, &ct, &body))
            })
            .collect();
        for r in requests {
            let (status, answer, retry) = r.join().unwrap();
            assert!(status == 200 || status == 503, "{status}: {answer}");
            if status == 503 {
                assert_eq!(retry.as_deref(), Some("1"));
                assert!(answer["error"].as_str().unwrap().contains("queue"));
                refused = true;
            }
        }
        if refused {
            break;
        }
    }
    assert!(refused, "no request was refused with a queue of 8");
    // Too many images for the queue in one request: 400, not 503.
    let nine: Vec<Vec<u8>> = (0..9).map(|i| image(IMAGES[i % 3])).collect();
    let (ct, body) = multipart(&nine, &[]);
    assert_eq!(post(&server.url("/v1/embed"), &ct, &body).0, 400);
    assert!(server.stop().success());
}

/// A batch that panics answers its requests with 500 (JSON) and the server goes on (the
/// debug build's `CNX_FAILPOINT=batch-panic` makes the first batch panic).
#[test]
fn a_panicking_batch_answers_500_and_the_server_goes_on() {
    let server = Server::start_with_env(&[], &[("CNX_FAILPOINT", "batch-panic")]);
    let img = image(IMAGES[0]);
    let (status, answer, _) = post(&server.url("/v1/classify"), "image/jpeg", &img);
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("panicked"));
    let (status, _, _) = post(&server.url("/v1/classify"), "image/jpeg", &img);
    assert_eq!(status, 200);
    assert_eq!(get(&server.url("/health")).0, 200);
    assert!(server.stop().success());
}

/// SIGTERM with requests in flight: each is answered (200), once; then the server exits 0.
#[test]
fn shutdown_answers_requests_in_flight() {
    let server = Server::start(&["--max-batch", "1", "--max-delay-ms", "0"]);
    let eight: Vec<Vec<u8>> = (0..8).map(|i| image(IMAGES[i % 3])).collect();
    let (ct, body) = multipart(&eight, &[]);
    let requests: Vec<_> = (0..2)
        .map(|_| {
            let (url, ct, body) = (server.url("/v1/embed"), ct.clone(), body.clone());
            std::thread::spawn(move || post(&url, &ct, &body))
        })
        .collect();
    // Wait (bounded) until images are queued, then stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = get(&server.url("/metrics"));
        let queued = metrics
            .lines()
            .find(|l| l.starts_with("cnx_queue_depth "))
            .map(|l| l != "cnx_queue_depth 0")
            .unwrap_or(false);
        if queued || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = server.stop();
    for r in requests {
        let (code, answer, _) = r.join().unwrap();
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer.as_array().unwrap().len(), 8);
    }
    assert!(status.success());
}

/// The trained digits model served: a held-out digit posted to `/v1/classify` gets
/// transformers' top-1 label, with `cnx classify`'s probability exactly, and within
/// transformers' softmax probability by half the logits' tolerance (a softmax probability moves
/// at most max |d logit| / 2 when the logits move: |dp_i| <= 2 p_i (1 - p_i) max |dz| <= max
/// |dz| / 2).
#[test]
fn digits_served_as_transformers_classifies_them() {
    let digits = digits::Digits::load(&repo());
    // One of every digit: the first held-out image of each class.
    let picks: Vec<&digits::HeldOutImage> = (0..10)
        .map(|d| digits.images.iter().find(|i| i.label == d).unwrap())
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args([
            "classify",
            "--json",
            "--backend",
            "interp",
            "--top",
            "1",
            "--model",
        ])
        .arg(&digits.model)
        .args(picks.iter().map(|i| &i.path))
        .output()
        .unwrap();
    assert!(out.status.success());
    let offline: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["top"][0].clone())
        .collect();
    let server = Server::start_model(&digits.model, &["--max-delay-ms", "5"], &[]);
    for (image, offline) in picks.iter().zip(&offline) {
        let body = std::fs::read(&image.path).unwrap();
        let (status, answer, _) = post(&server.url("/v1/classify"), "image/png", &body);
        assert_eq!(status, 200, "{}: {answer}", image.name);
        let best = &answer[0];
        assert_eq!(best["label"], image.predicted.to_string(), "{}", image.name);
        assert_eq!(best["score"], offline["probability"], "{}", image.name);
        let max = image.logits.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = image.logits.iter().map(|z| (z - max).exp()).sum();
        let theirs = (image.logits[image.predicted] - max).exp() / sum;
        let ours = best["score"].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= digits.tolerance() / 2.0,
            "{}: score {ours} against transformers' {theirs}",
            image.name
        );
    }
    assert!(server.stop().success());
}

/// In bf16 the server runs the same program as `cnx classify --precision bf16`: the same
/// labels and scores, bit for bit (the JIT serving, the interpreter offline).
#[test]
fn bf16_served_as_classified_offline() {
    let digits = digits::Digits::load(&repo());
    let picks: Vec<&digits::HeldOutImage> = digits.images.iter().step_by(37).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args([
            "classify",
            "--json",
            "--backend",
            "interp",
            "--precision",
            "bf16",
        ])
        .args(["--top", "1", "--model"])
        .arg(&digits.model)
        .args(picks.iter().map(|i| &i.path))
        .output()
        .unwrap();
    assert!(out.status.success());
    let offline: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["top"][0].clone())
        .collect();
    assert_eq!(offline.len(), picks.len());
    let args = ["--precision", "bf16", "--max-delay-ms", "5"];
    let server = Server::start_model(&digits.model, &args, &[]);
    for (image, offline) in picks.iter().zip(&offline) {
        let body = std::fs::read(&image.path).unwrap();
        let (status, answer, _) = post(&server.url("/v1/classify"), "image/png", &body);
        assert_eq!(status, 200, "{}: {answer}", image.name);
        assert_eq!(answer[0]["label"], offline["label"], "{}", image.name);
        assert_eq!(answer[0]["score"], offline["probability"], "{}", image.name);
    }
    assert!(server.stop().success());
}

/// The Open Inference Protocol (KServe V2) over plain HTTP, against the spec's JSON shapes:
/// health, metadata, readiness, and inference on encoded images (BYTES, base64 JSON and the
/// binary tensor extension) and on pixel values (FP32, JSON and binary), whose outputs equal
/// `cnx classify` / `cnx embed` / `cnx preprocess` bit for bit.
#[test]
fn open_inference_protocol_v2() {
    let (top, embeddings) = offline();
    let hidden = embeddings.len() / IMAGES.len();
    let server = Server::start(&["--max-batch", "4", "--max-delay-ms", "50"]);
    let name = "atto-224-b2";
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    let (status, body) = get(&server.url("/v2/health/live"));
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"live": true}))
    );
    let (status, body) = get(&server.url("/v2/health/ready"));
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"ready": true}))
    );
    let (status, body) = get(&server.url("/v2"));
    assert_eq!((status, json(&body)["name"].as_str()), (200, Some("cnx")));
    let (status, body) = get(&server.url(&format!("/v2/models/{name}")));
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!({
            "name": name, "versions": ["1"], "platform": "cnx",
            "inputs": [
                {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 224, 224]},
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, 1000]},
                {"name": "pooler_output", "datatype": "FP32", "shape": [-1, hidden]},
            ],
        })
    );
    for path in [
        format!("/v2/models/{name}/ready"),
        format!("/v2/models/{name}/versions/1/ready"),
        format!("/v2/models/{name}/versions/1"),
    ] {
        assert_eq!(get(&server.url(&path)).0, 200, "{path}");
    }
    for path in [
        "/v2/models/other".to_string(),
        "/v2/models/other/ready".into(),
        format!("/v2/models/{name}/versions/2/ready"),
    ] {
        let (status, body) = get(&server.url(&path));
        assert_eq!(status, 404, "{path}");
        assert!(json(&body)["error"].as_str().is_some(), "{path}: {body}");
    }

    let check = |answer: &serde_json::Value, who: &str| {
        assert_eq!(answer["model_name"], name, "{who}");
        let outputs = answer["outputs"].as_array().unwrap();
        assert_eq!(outputs[0]["name"], "logits", "{who}");
        assert_eq!(outputs[0]["datatype"], "FP32", "{who}");
        assert_eq!(outputs[0]["shape"], serde_json::json!([3, 1000]), "{who}");
        assert_eq!(outputs[1]["shape"], serde_json::json!([3, hidden]), "{who}");
        let logits = floats(&outputs[0]["data"]);
        let labels: Vec<String> = (0..1000).map(|i| format!("LABEL_{i}")).collect();
        for (i, row) in logits.chunks(1000).enumerate() {
            // Probabilities from the same logits by the same function; `cnx classify --json`
            // prints them exactly, but serde_json's default parser may round the last bit of an
            // f64 (its `float_roundtrip` feature is off): within 4 ulps.
            let want = &top[i];
            let got = cnx_cli::classify::top_k(row, &labels, 5);
            for (g, w) in got.iter().zip(want.as_array().unwrap()) {
                assert_eq!(
                    g.index as u64,
                    w["index"].as_u64().unwrap(),
                    "{who} image {i}"
                );
                let p = w["probability"].as_f64().unwrap();
                assert!(
                    (g.probability - p).abs() <= 4.0 * f64::EPSILON * p,
                    "{who} image {i}: {} vs {p}",
                    g.probability
                );
            }
        }
        assert_eq!(floats(&outputs[1]["data"]), embeddings, "{who}");
    };
    let infer = server.url(&format!("/v2/models/{name}/infer"));

    // BYTES as base64 strings in JSON.
    let data: Vec<String> = IMAGES
        .iter()
        .map(|n| base64::engine::general_purpose::STANDARD.encode(image(n)))
        .collect();
    let request = serde_json::json!({"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": data}]});
    let (status, answer, _) = post(&infer, "application/json", request.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "r1");
    check(&answer, "BYTES json");

    // BYTES in the binary extension: 4-byte little-endian length, then the bytes.
    let mut blob = Vec::new();
    for n in IMAGES {
        let bytes = image(n);
        blob.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        blob.extend_from_slice(&bytes);
    }
    let head = serde_json::json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": blob.len()}}]}).to_string();
    let answer = post_binary(&infer, &head, &blob);
    check(&answer, "BYTES binary");

    // FP32 pixel values, as `cnx preprocess` makes them: JSON (nested as the shape) and binary.
    let files: Vec<PathBuf> = IMAGES
        .iter()
        .map(|n| repo().join("tests/fixtures/images").join(n))
        .collect();
    let pixels = cnx_to_npy(&["preprocess"], &files);
    let nested: Vec<Vec<Vec<Vec<f32>>>> = pixels
        .data()
        .chunks(3 * 224 * 224)
        .map(|img| {
            img.chunks(224 * 224)
                .map(|ch| ch.chunks(224).map(<[f32]>::to_vec).collect())
                .collect()
        })
        .collect();
    let request = serde_json::json!({"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [3, 3, 224, 224], "data": nested}],
        "outputs": [{"name": "logits"}, {"name": "pooler_output"}]});
    let (status, answer, _) = post(&infer, "application/json", request.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    check(&answer, "FP32 json");
    let raw: Vec<u8> = pixels.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    let head = serde_json::json!({"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [3, 3, 224, 224], "parameters": {"binary_data_size": raw.len()}}]}).to_string();
    check(&post_binary(&infer, &head, &raw), "FP32 binary");
    let versioned = server.url(&format!("/v2/models/{name}/versions/1/infer"));
    check(
        &post_binary(&versioned, &head, &raw),
        "FP32 binary, version 1",
    );

    // Errors: the spec's {"error": ...}, 400 or 404; the server goes on.
    let mut nan = raw.clone();
    nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
        (infer.clone(), b"{".to_vec(), 400, "not valid JSON"),
        (
            infer.clone(),
            serde_json::json!({"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": vec![0.0; 3072]}]}).to_string().into_bytes(),
            400,
            "the model's size",
        ),
        (
            infer.clone(),
            serde_json::json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}]}).to_string().into_bytes(),
            400,
            "image 0",
        ),
        (
            server.url("/v2/models/other/infer"),
            b"{}".to_vec(),
            404,
            "not served here",
        ),
    ];
    for (url, body, code, needle) in cases {
        let (status, answer, _) = post(&url, "application/json", &body);
        assert_eq!(status, code, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    let response = agent()
        .post(&infer)
        .set("Inference-Header-Content-Length", &head.len().to_string())
        .send_bytes(&[head.as_bytes(), &nan].concat());
    let Err(ureq::Error::Status(400, r)) = response else {
        panic!("NaN pixel values were not refused");
    };
    assert!(r.into_string().unwrap().contains("NaN or infinite"));
    assert!(server.stop().success());
}

/// POSTs a V2 request in the binary tensor data extension: the JSON header, then `data`.
fn post_binary(url: &str, head: &str, data: &[u8]) -> serde_json::Value {
    let body = [head.as_bytes(), data].concat();
    let response = agent()
        .post(url)
        .set("Content-Type", "application/octet-stream")
        .set("Inference-Header-Content-Length", &head.len().to_string())
        .send_bytes(&body)
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    response.into_json().unwrap()
}
