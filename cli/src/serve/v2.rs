//! The Open Inference Protocol (KServe V2) over REST, beside cnx's own routes, so that KServe,
//! Triton's and KServe's clients, and anything else that speaks it run cnx as a model server.
//!
//! - `GET /v2/health/live`, `GET /v2/health/ready`: 200 (`{"live": true}`, `{"ready": true}`).
//! - `GET /v2`: server metadata. `GET /v2/models/{name}[/versions/{v}]`: model metadata (its
//!   inputs and outputs). `GET /v2/models/{name}[/versions/{v}]/ready`: 200. The one model is
//!   named as `cnx serve` names it (`--model`'s last path component); version `1`.
//! - `POST /v2/models/{name}[/versions/{v}]/infer`: one input, either `pixel_values` (FP32,
//!   `[batch, 3, H, W]` at the model's size: transformers' pixel values) or `image` (BYTES,
//!   `[batch]`: encoded images, preprocessed as `cnx classify` does; base64 strings in JSON).
//!   Outputs `logits` and `pooler_output` (FP32 `[batch, n]`), or those named in `outputs`.
//!   Tensor data as JSON (flat or nested, row-major) or, with the `Inference-Header-Content-Length`
//!   header, as the binary tensor data extension (the JSON header, then each input with
//!   `parameters.binary_data_size` as raw little-endian bytes; BYTES elements each a 4-byte
//!   little-endian length and the bytes). Answers are JSON.
//! - Errors: `{"error": "..."}` with 400 (bad request), 404 (another model), 503 (queue full).
//!
//! Images join the same queue and batches as `/v1`: an image's outputs equal `cnx classify` /
//! `cnx embed`'s bit for bit.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{error, infer, preprocess_all, read_body, Shared};

/// The version the model is served as.
pub const MODEL_VERSION: &str = "1";

/// What the server answers as its model's name, and the widths of its outputs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub logits: usize,
    pub pooled: usize,
}

pub(super) async fn live(State(s): State<Shared>) -> Response {
    s.metrics.request("v2_health", 200);
    Json(json!({"live": true})).into_response()
}

/// Ready whenever reachable: the port is bound only after the model is loaded and warmed.
pub(super) async fn ready(State(s): State<Shared>) -> Response {
    s.metrics.request("v2_health", 200);
    Json(json!({"ready": true})).into_response()
}

pub(super) async fn server_metadata(State(s): State<Shared>) -> Response {
    s.metrics.request("v2_metadata", 200);
    Json(json!({
        "name": "cnx",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

/// `{name}` or `{name}/versions/{version}`: the error answer (404) if they are not this
/// model's.
fn wrong_model(s: &Shared, name: &str, version: Option<&str>) -> Option<Response> {
    if name != s.v2.name {
        return Some(error(
            StatusCode::NOT_FOUND,
            format!(
                "model `{name}` is not served here (this server serves `{}`)",
                s.v2.name
            ),
        ));
    }
    match version {
        Some(v) if v != MODEL_VERSION => Some(error(
            StatusCode::NOT_FOUND,
            format!("model `{name}` has no version `{v}` (its version is `{MODEL_VERSION}`)"),
        )),
        _ => None,
    }
}

fn metadata(s: &Shared) -> Value {
    let [c, h, w] = s.input;
    json!({
        "name": s.v2.name,
        "versions": [MODEL_VERSION],
        "platform": "cnx",
        "inputs": [
            {"name": "pixel_values", "datatype": "FP32", "shape": [-1, c, h, w]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, s.v2.logits]},
            {"name": "pooler_output", "datatype": "FP32", "shape": [-1, s.v2.pooled]},
        ],
    })
}

pub(super) async fn model_metadata(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    let wrong = wrong_model(&s, &name, None);
    respond(&s, "v2_metadata", wrong, || metadata(&s))
}

pub(super) async fn version_metadata(
    State(s): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let wrong = wrong_model(&s, &name, Some(&version));
    respond(&s, "v2_metadata", wrong, || metadata(&s))
}

pub(super) async fn model_ready(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    let wrong = wrong_model(&s, &name, None);
    respond(
        &s,
        "v2_health",
        wrong,
        || json!({"name": name, "ready": true}),
    )
}

pub(super) async fn version_ready(
    State(s): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let wrong = wrong_model(&s, &name, Some(&version));
    respond(
        &s,
        "v2_health",
        wrong,
        || json!({"name": name, "ready": true}),
    )
}

/// `wrong`, else the JSON `answer`; counted under `route`.
fn respond(
    s: &Shared,
    route: &'static str,
    wrong: Option<Response>,
    answer: impl FnOnce() -> Value,
) -> Response {
    let response = wrong.unwrap_or_else(|| Json(answer()).into_response());
    s.metrics.request(route, response.status().as_u16());
    response
}

pub(super) async fn model_infer(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let response = match wrong_model(&s, &name, None) {
        None => run(&s, headers, body).await,
        Some(r) => r,
    };
    s.metrics.request("v2_infer", response.status().as_u16());
    response
}

pub(super) async fn version_infer(
    State(s): State<Shared>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let response = match wrong_model(&s, &name, Some(&version)) {
        None => run(&s, headers, body).await,
        Some(r) => r,
    };
    s.metrics.request("v2_infer", response.status().as_u16());
    response
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

async fn run(s: &Shared, headers: HeaderMap, body: axum::body::Body) -> Response {
    let body = match read_body(s, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let header_length = match headers.get("inference-header-content-length") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) if n <= body.len() => Some(n),
            _ => return bad("Inference-Header-Content-Length is not a length within the body"),
        },
    };
    let request = match parse(&body, header_length, s.input, s.max_images) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let pixels = match request.input {
        Input::Pixels(p) => p,
        Input::Images(images) => match preprocess_all(s, images).await {
            Ok(p) => p,
            Err(r) => return r,
        },
    };
    let batch = pixels.len();
    let results = match infer(s, pixels).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let outputs: Vec<Value> = request
        .outputs
        .iter()
        .map(|name| {
            let (width, data): (usize, Vec<f32>) = match name.as_str() {
                "logits" => (
                    s.v2.logits,
                    results.iter().flat_map(|r| r.logits.clone()).collect(),
                ),
                _ => (
                    s.v2.pooled,
                    results.iter().flat_map(|r| r.pooled.clone()).collect(),
                ),
            };
            json!({"name": name, "datatype": "FP32", "shape": [batch, width], "data": data})
        })
        .collect();
    let mut answer = json!({
        "model_name": s.v2.name,
        "model_version": MODEL_VERSION,
        "outputs": outputs,
    });
    if let Some(id) = request.id {
        answer["id"] = Value::String(id);
    }
    Json(answer).into_response()
}

/// An inference request's one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Pixel values, one `C x H x W` row per image.
    Pixels(Vec<Vec<f32>>),
    /// Encoded images.
    Images(Vec<Vec<u8>>),
}

/// A parsed inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub input: Input,
    /// The outputs to answer with, in order.
    pub outputs: Vec<String>,
}

const OUTPUTS: [&str; 2] = ["logits", "pooler_output"];

/// Parses an inference request: `body` is JSON, or (with `header_length`) a JSON header of
/// that many bytes followed by binary tensor data. `chw` is the model's input per image; at
/// most `max_images` images. Pure: no I/O (unit-tested below).
pub fn parse(
    body: &[u8],
    header_length: Option<usize>,
    chw: [usize; 3],
    max_images: usize,
) -> Result<InferRequest, String> {
    let (head, binary) = match header_length {
        Some(n) => (&body[..n], &body[n..]),
        None => (body, &[][..]),
    };
    let v: Value =
        serde_json::from_slice(head).map_err(|e| format!("the request is not valid JSON: {e}"))?;
    let id = request_id(&v)?;
    let tensor = TensorHeader::parse(the_input(&v)?, max_images)?;
    let input = match (tensor.name, tensor.datatype) {
        ("pixel_values", "FP32") => Input::Pixels(pixel_values(&tensor, binary, chw)?),
        ("image", "BYTES") => Input::Images(encoded_images(&tensor, binary)?),
        (name, datatype) => {
            return Err(format!(
                "input `{name}` ({datatype}): expected `pixel_values` (FP32) or `image` (BYTES)"
            ))
        }
    };
    let outputs = requested_outputs(&v)?;
    Ok(InferRequest { id, input, outputs })
}

/// The request's `id`, if it has one.
fn request_id(v: &Value) -> Result<Option<String>, String> {
    match v.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`id` must be a string, found {other}")),
    }
}

/// The request's one input tensor.
fn the_input(v: &Value) -> Result<&Value, String> {
    let inputs = v
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or("the request has no `inputs` array")?;
    let [tensor] = inputs.as_slice() else {
        return Err(format!(
            "expected one input (`pixel_values` FP32 or `image` BYTES), found {}",
            inputs.len()
        ));
    };
    Ok(tensor)
}

/// An input tensor as its JSON describes it, its data not read yet.
struct TensorHeader<'a> {
    tensor: &'a Value,
    name: &'a str,
    datatype: &'a str,
    shape: Vec<usize>,
    /// Elements of `shape`.
    count: usize,
    /// Images: the shape's first size.
    batch: usize,
    /// Bytes of its data after the JSON header (the binary extension), if sent that way.
    binary_size: Option<usize>,
}

impl<'a> TensorHeader<'a> {
    /// Reads the name, datatype, shape and binary size of `tensor`, checking that the shape
    /// holds 1 to `max_images` images.
    fn parse(tensor: &'a Value, max_images: usize) -> Result<Self, String> {
        let name = tensor.get("name").and_then(Value::as_str).unwrap_or("");
        let datatype = tensor.get("datatype").and_then(Value::as_str).unwrap_or("");
        let shape: Vec<usize> = tensor
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .ok_or_else(|| format!("input `{name}`: `shape` must be an array of sizes"))?;
        let count = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("input `{name}`: shape {shape:?} is too large"))?;
        let batch = shape.first().copied().unwrap_or(0);
        if batch == 0 {
            return Err(format!("input `{name}`: shape {shape:?} holds no image"));
        }
        if batch > max_images {
            return Err(format!(
                "input `{name}`: {batch} images, more than {max_images} (the queue's size)"
            ));
        }
        let binary_size = tensor
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"))
            .map(|n| {
                n.as_u64()
                    .map(|n| n as usize)
                    .ok_or("`binary_data_size` must be a size")
            })
            .transpose()?;
        Ok(TensorHeader {
            tensor,
            name,
            datatype,
            shape,
            count,
            batch,
            binary_size,
        })
    }

    /// Its `size` bytes at the start of `binary` (the data after the JSON header).
    fn take_binary<'b>(&self, binary: &'b [u8], size: usize) -> Result<&'b [u8], String> {
        if size > binary.len() {
            return Err(format!(
                "input `{}`: binary_data_size {size} but {} bytes follow the header",
                self.name,
                binary.len()
            ));
        }
        Ok(&binary[..size])
    }

    /// Its JSON `data` (null when absent).
    fn data(&self) -> &'a Value {
        self.tensor.get("data").unwrap_or(&Value::Null)
    }
}

/// The values of a `pixel_values` input (FP32 `[batch, C, H, W]` at the model's `chw`), one
/// row per image; refused when any is NaN or infinite.
fn pixel_values(
    tensor: &TensorHeader<'_>,
    binary: &[u8],
    chw: [usize; 3],
) -> Result<Vec<Vec<f32>>, String> {
    let (shape, count) = (&tensor.shape, tensor.count);
    let [c, h, w] = chw;
    if shape.len() != 4 || shape[1..] != chw {
        return Err(format!(
            "input `pixel_values`: shape must be [batch, {c}, {h}, {w}] (the model's size), found {shape:?}"
        ));
    }
    let values: Vec<f32> = match tensor.binary_size {
        Some(size) => {
            let bytes = tensor.take_binary(binary, size)?;
            if bytes.len() != count * 4 {
                return Err(format!(
                    "input `pixel_values`: {} bytes of FP32 data for shape {shape:?} ({} values)",
                    bytes.len(),
                    count
                ));
            }
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        None => {
            let mut flat = Vec::with_capacity(count);
            flatten_numbers(tensor.data(), &mut flat)?;
            flat
        }
    };
    if values.len() != count {
        return Err(format!(
            "input `pixel_values`: {} values for shape {shape:?} ({count})",
            values.len()
        ));
    }
    cnx_runtime::program::check_finite(&values, chw, cnx_runtime::program::NonFinite::Refuse)
        .map_err(|e| format!("input `pixel_values`: {e}"))?;
    Ok(values.chunks(c * h * w).map(<[f32]>::to_vec).collect())
}

/// The images of an `image` input (BYTES `[batch]`), still encoded.
fn encoded_images(tensor: &TensorHeader<'_>, binary: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let shape = &tensor.shape;
    if shape.len() != 1 {
        return Err(format!(
            "input `image`: shape must be [batch] (one encoded image each), found {shape:?}"
        ));
    }
    let images = match tensor.binary_size {
        Some(size) => split_binary_bytes(tensor.take_binary(binary, size)?)?,
        None => base64_images(tensor.data())?,
    };
    if images.len() != tensor.batch {
        return Err(format!(
            "input `image`: {} images for shape {shape:?}",
            images.len()
        ));
    }
    Ok(images)
}

/// The base64 strings of `data` (flat or nested arrays), decoded.
fn base64_images(data: &Value) -> Result<Vec<Vec<u8>>, String> {
    let mut strings = Vec::new();
    flatten_strings(data, &mut strings)?;
    strings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| format!("input `image`: element {i} is not base64 ({e})"))
        })
        .collect()
}

/// The outputs the request names (`outputs`), in order; every output when it names none.
fn requested_outputs(v: &Value) -> Result<Vec<String>, String> {
    match v.get("outputs") {
        None | Some(Value::Null) => Ok(OUTPUTS.iter().map(|s| s.to_string()).collect()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|o| {
                let name = o.get("name").and_then(Value::as_str).unwrap_or("");
                if OUTPUTS.contains(&name) {
                    Ok(name.to_string())
                } else {
                    Err(format!(
                        "output `{name}`: not an output of this model (logits, pooler_output)"
                    ))
                }
            })
            .collect(),
        Some(other) => Err(format!("`outputs` must be an array, found {other}")),
    }
}

/// Row-major numbers of flat or nested arrays.
fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_numbers(i, out)),
        Value::Number(n) => {
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        Value::Null => Err("input `pixel_values` has no `data`".into()),
        other => Err(format!("input `pixel_values`: `{other}` is not a number")),
    }
}

fn flatten_strings(v: &Value, out: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_strings(i, out)),
        Value::String(s) => {
            out.push(s.clone());
            Ok(())
        }
        Value::Null => Err("input `image` has no `data`".into()),
        other => Err(format!(
            "input `image`: `{other}` is not a base64 string of an encoded image"
        )),
    }
}

/// BYTES elements in the binary extension: each a 4-byte little-endian length, then the bytes.
fn split_binary_bytes(mut data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            return Err("input `image`: binary data ends inside an element's length".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err("input `image`: binary data ends inside an element".into());
        }
        out.push(rest[..len].to_vec());
        data = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHW: [usize; 3] = [3, 2, 2];

    #[test]
    fn json_and_binary_requests() {
        let nested = br#"{"id": "7", "inputs": [{"name": "pixel_values", "datatype": "FP32",
            "shape": [1, 3, 2, 2], "data": [[[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]]]}],
            "outputs": [{"name": "pooler_output"}]}"#;
        let r = parse(nested, None, CHW, 4).unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.outputs, vec!["pooler_output"]);
        assert_eq!(
            r.input,
            Input::Pixels(vec![(0..12).map(|v| v as f32).collect()])
        );

        let head = br#"{"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 2, 2], "parameters": {"binary_data_size": 48}}]}"#;
        let mut body = head.to_vec();
        for v in 0..12 {
            body.extend_from_slice(&(v as f32 * 0.5).to_le_bytes());
        }
        let r = parse(&body, Some(head.len()), CHW, 4).unwrap();
        assert_eq!(r.outputs, vec!["logits", "pooler_output"]);
        assert_eq!(
            r.input,
            Input::Pixels(vec![(0..12).map(|v| v as f32 * 0.5).collect()])
        );

        let images = br#"{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk=", "AAE="]}]}"#;
        let r = parse(images, None, CHW, 4).unwrap();
        assert_eq!(r.input, Input::Images(vec![b"hi".to_vec(), vec![0, 1]]));

        let head = br#"{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&[2, 0, 0, 0, b'h', b'i', 1, 0, 0, 0, 9]);
        let r = parse(&body, Some(head.len()), CHW, 4).unwrap();
        assert_eq!(r.input, Input::Images(vec![b"hi".to_vec(), vec![9]]));
    }

    #[test]
    fn bad_requests_say_why() {
        let pixel = |shape: &str, data: &str| {
            format!(
                r#"{{"inputs": [{{"name": "pixel_values", "datatype": "FP32", "shape": {shape}, "data": {data}}}]}}"#
            )
        };
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "not valid JSON"),
            ("{}".into(), "no `inputs`"),
            (r#"{"inputs": []}"#.into(), "expected one input"),
            (pixel("[1, 3, 4, 4]", "[]"), "the model's size"),
            (pixel("[1, 3, 2, 2]", "[1, 2]"), "2 values"),
            (pixel("[1, 3, 2, 2]", r#"["a"]"#), "not a number"),
            (pixel("[0, 3, 2, 2]", "[]"), "no image"),
            (pixel("[5, 3, 2, 2]", "[]"), "more than 4"),
            (
                r#"{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["!!"]}]}"#.into(),
                "not base64",
            ),
            (
                r#"{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]}"#.into(),
                "expected `pixel_values`",
            ),
            (
                format!(
                    r#"{{"inputs": [{{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": {}}}], "outputs": [{{"name": "probs"}}]}}"#,
                    serde_json::to_string(&vec![0.0; 12]).unwrap()
                ),
                "not an output",
            ),
        ];
        for (body, needle) in cases {
            let err = parse(body.as_bytes(), None, CHW, 4).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        // NaN only arrives through the binary extension (JSON has none): refused, named.
        let head = br#"{"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 2, 2], "parameters": {"binary_data_size": 48}}]}"#;
        let mut body = head.to_vec();
        for v in 0..12 {
            let x = if v == 5 { f32::NAN } else { 0.0 };
            body.extend_from_slice(&x.to_le_bytes());
        }
        let err = parse(&body, Some(head.len()), CHW, 4).unwrap_err();
        assert!(err.contains("NaN or infinite"), "{err}");
        let err = parse(&body[..body.len() - 4], Some(head.len()), CHW, 4).unwrap_err();
        assert!(err.contains("binary_data_size 48 but 44"), "{err}");
    }
}
