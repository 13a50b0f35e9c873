//! What a `POST /v1/classify` or `/v1/embed` body holds: one image as raw bytes, a JSON
//! object (`{"image": base64}` or `{"images": [base64, ...]}`, with `top_k` / `normalize`), or a
//! multipart form of several images. Pure parsing, no I/O: fuzzed (`tests/fuzz`).

use base64::Engine as _;

/// The images of a request and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    /// Encoded images (any format `cnx classify` reads).
    pub images: Vec<Vec<u8>>,
    /// Labels per image (classify).
    pub top_k: Option<usize>,
    /// L2-normalise embeddings (embed).
    pub normalize: Option<bool>,
    /// Whether the answer is a list with one entry per image (several images, or a multipart
    /// form), rather than the one image's answer.
    pub many: bool,
}

/// A body that is not a request cnx understands; the message says why (answered as 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn bad(message: impl Into<String>) -> RequestError {
    RequestError(message.into())
}

/// Parses a body sent with `content_type`; at most `max_images` images.
pub async fn parse(
    content_type: Option<&str>,
    body: Vec<u8>,
    max_images: usize,
) -> Result<ImageRequest, RequestError> {
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    let request = match mime.as_deref() {
        Some("application/json") => parse_json(&body)?,
        Some("multipart/form-data") => {
            let boundary = multer::parse_boundary(content_type.unwrap_or_default())
                .map_err(|e| bad(format!("multipart body: {e}")))?;
            parse_multipart(body, boundary, max_images).await?
        }
        // Anything else is the image itself (image/jpeg, application/octet-stream, none).
        _ => ImageRequest {
            images: vec![body],
            top_k: None,
            normalize: None,
            many: false,
        },
    };
    if request.images.is_empty() {
        return Err(bad("the request holds no image"));
    }
    if request.images.len() > max_images {
        return Err(bad(format!(
            "{} images in one request; at most {max_images} (the queue's size)",
            request.images.len()
        )));
    }
    if request.top_k == Some(0) {
        return Err(bad("`top_k` must be at least 1"));
    }
    Ok(request)
}

/// `{"image": "<base64>"}` or `{"images": ["<base64>", ...]}`, with optional `top_k` and
/// `normalize`.
fn parse_json(body: &[u8]) -> Result<ImageRequest, RequestError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("expected a JSON object with `image` or `images`"))?;
    let decode = |i: usize, v: &serde_json::Value| -> Result<Vec<u8>, RequestError> {
        let text = v
            .as_str()
            .ok_or_else(|| bad(format!("image {i} is not a base64 string")))?;
        // Data URLs (`data:image/png;base64,...`) carry the base64 after the comma.
        let text = text.split_once(";base64,").map_or(text, |(_, b)| b);
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| bad(format!("image {i} is not valid base64: {e}")))
    };
    let (images, many) = match (object.get("image"), object.get("images")) {
        (Some(one), None) => (vec![decode(0, one)?], false),
        (None, Some(serde_json::Value::Array(list))) => (
            list.iter()
                .enumerate()
                .map(|(i, v)| decode(i, v))
                .collect::<Result<_, _>>()?,
            true,
        ),
        (None, Some(_)) => return Err(bad("`images` must be a list of base64 strings")),
        (Some(_), Some(_)) => return Err(bad("give `image` or `images`, not both")),
        (None, None) => return Err(bad("expected `image` (base64) or `images` (a list)")),
    };
    let top_k = match object.get("top_k") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| bad(format!("`top_k` is {v}, not a positive integer")))?,
        ),
    };
    let normalize = match object.get("normalize") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or_else(|| bad(format!("`normalize` is {v}, not true or false")))?,
        ),
    };
    Ok(ImageRequest {
        images,
        top_k,
        normalize,
        many,
    })
}

/// Every file field of a multipart form is an image, in order; a text field `top_k` or
/// `normalize` sets the option.
async fn parse_multipart(
    body: Vec<u8>,
    boundary: String,
    max_images: usize,
) -> Result<ImageRequest, RequestError> {
    let stream = futures_util::stream::once(async move {
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(body))
    });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut request = ImageRequest {
        images: Vec::new(),
        top_k: None,
        normalize: None,
        many: true,
    };
    let multipart = |e: multer::Error| bad(format!("multipart body: {e}"));
    while let Some(field) = form.next_field().await.map_err(multipart)? {
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some();
        let bytes = field.bytes().await.map_err(multipart)?;
        match (is_file, name.as_str()) {
            (false, "top_k") => {
                let text = String::from_utf8_lossy(&bytes);
                let k = text
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("`top_k` is `{text}`, not a positive integer")))?;
                request.top_k = Some(k);
            }
            (false, "normalize") => {
                let text = String::from_utf8_lossy(&bytes);
                let flag = text
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("`normalize` is `{text}`, not true or false")))?;
                request.normalize = Some(flag);
            }
            _ => {
                if request.images.len() == max_images {
                    return Err(bad(format!(
                        "more than {max_images} images in one request (the queue's size)"
                    )));
                }
                request.images.push(bytes.to_vec());
            }
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(content_type: Option<&str>, body: &[u8]) -> Result<ImageRequest, RequestError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(parse(content_type, body.to_vec(), 4))
    }

    #[test]
    fn raw_json_and_multipart_bodies() {
        let raw = run(Some("image/png"), b"\x89PNG").unwrap();
        assert_eq!((raw.images, raw.many), (vec![b"\x89PNG".to_vec()], false));
        let json = run(
            Some("application/json; charset=utf-8"),
            br#"{"image": "aGk=", "top_k": 3}"#,
        )
        .unwrap();
        assert_eq!((json.images, json.top_k), (vec![b"hi".to_vec()], Some(3)));
        let list = run(
            Some("application/json"),
            br#"{"images": ["aGk=", "data:image/png;base64,aGk="], "normalize": true}"#,
        )
        .unwrap();
        assert_eq!(
            (list.images.len(), list.many, list.normalize),
            (2, true, Some(true))
        );
        let form = b"--XX\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a.png\"\r\n\r\nAAA\r\n--XX\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n2\r\n--XX\r\nContent-Disposition: form-data; name=\"b\"; filename=\"b.png\"\r\n\r\nBB\r\n--XX--\r\n";
        let multi = run(Some("multipart/form-data; boundary=XX"), form).unwrap();
        assert_eq!(multi.images, vec![b"AAA".to_vec(), b"BB".to_vec()]);
        assert_eq!(multi.top_k, Some(2));
    }

    #[test]
    fn bad_bodies_say_why() {
        let cases: [(&str, &[u8], &str); 7] = [
            ("application/json", b"{", "not valid JSON"),
            (
                "application/json",
                br#"{"image": 3}"#,
                "not a base64 string",
            ),
            (
                "application/json",
                br#"{"image": "!!"}"#,
                "not valid base64",
            ),
            (
                "application/json",
                br#"{"image": "aGk=", "top_k": 0}"#,
                "at least 1",
            ),
            ("application/json", br#"{"images": []}"#, "no image"),
            (
                "application/json",
                br#"{"images": ["", "", "", "", ""]}"#,
                "at most 4",
            ),
            ("multipart/form-data", b"", "multipart"),
        ];
        for (ct, body, needle) in cases {
            let err = run(Some(ct), body).unwrap_err();
            assert!(err.0.contains(needle), "{ct} {body:?}: {err}");
        }
    }
}
