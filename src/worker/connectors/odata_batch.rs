//! OData v4 `$batch` in the multipart format (OData 4.0 Part 1 §11.7, `multipart/mixed`):
//! writing requests and reading responses for the OData target (the ERP simulator has its own
//! reader and writer, on mailparse and httparse, in `sim::batch`).
//!
//! Hand-written on purpose: no crate reads `multipart/mixed` responses whose parts are
//! `application/http` messages (multer and similar parse `multipart/form-data` requests on a
//! server), and this reader bounds nesting depth and part count as untrusted bodies need.
//!
//! Multipart rather than the JSON batch format of OData 4.01: every OData v4 service that
//! takes batches takes multipart (it is the 4.0 format), while JSON batches are optional and
//! missing from several ERPs (Dataverse accepts multipart only; SAP Gateway and many OData
//! libraries added JSON batches late). Requests go outside change sets on purpose: a change
//! set is atomic, so one refused record would fail all of them; independent requests get
//! one response each.

/// One request inside a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRequest {
    /// Content-ID of the part (matches the response to the request).
    pub content_id: Option<String>,
    /// HTTP method, e.g. PATCH.
    pub method: String,
    /// URL relative to the service root, e.g. `Set(Key='1')`.
    pub url: String,
    /// Request headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
}

impl PartRequest {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// One response inside a batch response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartResponse {
    /// Content-ID of the request it answers, when the service echoes it.
    pub content_id: Option<String>,
    /// HTTP status.
    pub status: u16,
    /// Response headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

impl PartResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Writes a batch request body with `boundary`.
pub fn encode_requests(boundary: &str, requests: &[PartRequest]) -> Vec<u8> {
    let size: usize = requests.iter().map(|r| r.body.len() + 256).sum();
    let mut out = Vec::with_capacity(size + 64);
    for request in requests {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(
            b"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n",
        );
        if let Some(id) = &request.content_id {
            out.extend_from_slice(format!("Content-ID: {id}\r\n").as_bytes());
        }
        out.extend_from_slice(
            format!("\r\n{} {} HTTP/1.1\r\n", request.method, request.url).as_bytes(),
        );
        for (name, value) in &request.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&request.body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// How deep multiparts may nest in a batch response: the batch itself, and change sets in it
/// (OData allows no change set inside a change set). Deeper is refused before it is read:
/// every level was scanned again by the level above it, and a ~700 KB body of nested parts
/// overflowed the worker's stack.
pub const MAX_NESTING: usize = 2;

/// How many parts a batch response may hold in all (the worker sends at most its batch size,
/// at most a few thousand; a response with more is not an answer to its request).
pub const MAX_PARTS: usize = 10_000;

/// Reads a batch response (responses inside change sets are flattened, in order). Refuses a
/// body nested deeper than [`MAX_NESTING`] or with more than [`MAX_PARTS`] parts.
pub fn decode_responses(content_type: &str, body: &[u8]) -> Result<Vec<PartResponse>, String> {
    let mut responses = Vec::new();
    let mut found = Vec::new();
    parts(content_type, body, 1, &mut found)?;
    for part in found {
        let (start, rest) = split_line(part.message);
        let status = start
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| start.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("batch part does not start with a status line: {start:?}"))?;
        let (headers, body) = headers_and_body(rest);
        responses.push(PartResponse {
            content_id: part.content_id,
            status,
            headers,
            body: body.to_vec(),
        });
    }
    Ok(responses)
}

/// An `application/http` part: its Content-ID and the HTTP message it carries.
struct Part<'a> {
    content_id: Option<String>,
    message: &'a [u8],
}

/// The `application/http` parts of a multipart body at nesting `depth` (the batch is 1),
/// descending into nested multiparts (change sets) up to [`MAX_NESTING`], into `out`.
fn parts<'a>(
    content_type: &str,
    body: &'a [u8],
    depth: usize,
    out: &mut Vec<Part<'a>>,
) -> Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "batch response nests multiparts deeper than {MAX_NESTING} levels"
        ));
    }
    let boundary = boundary_of(content_type)
        .ok_or_else(|| format!("{content_type:?} is not multipart/mixed with a boundary"))?;
    for raw in split_multipart(body, &boundary)? {
        if out.len() >= MAX_PARTS {
            return Err(format!("batch response has more than {MAX_PARTS} parts"));
        }
        let (headers, message) = headers_and_body(raw);
        let kind = find_header(&headers, "content-type").unwrap_or("application/http");
        if kind
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/mixed")
        {
            parts(kind, message, depth + 1, out)?;
            continue;
        }
        out.push(Part {
            content_id: find_header(&headers, "content-id").map(str::to_string),
            message,
        });
    }
    Ok(())
}

/// The bodies between `--boundary` delimiters (preamble and epilogue dropped).
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut positions = Vec::new();
    let mut at = 0;
    while let Some(found) = find(&body[at..], delimiter) {
        let start = at + found;
        // A delimiter starts a line.
        if start == 0 || body[start - 1] == b'\n' {
            positions.push(start);
        }
        at = start + delimiter.len();
    }
    let mut parts = Vec::new();
    for (n, start) in positions.iter().enumerate() {
        if parts.len() > MAX_PARTS {
            return Err(format!("multipart body has more than {MAX_PARTS} parts"));
        }
        let after = start + delimiter.len();
        if body[after..].starts_with(b"--") {
            return Ok(parts);
        }
        let Some(&end) = positions.get(n + 1) else {
            break;
        };
        let mut content = &body[after..end];
        // The rest of the delimiter line, and the CRLF that belongs to the next delimiter.
        content = match find(content, b"\n") {
            Some(eol) => &content[eol + 1..],
            None => &[],
        };
        content = content.strip_suffix(b"\n").unwrap_or(content);
        content = content.strip_suffix(b"\r").unwrap_or(content);
        parts.push(content);
    }
    Err("multipart body has no closing delimiter".into())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first line (without CR LF) and the rest.
fn split_line(text: &[u8]) -> (String, &[u8]) {
    match find(text, b"\n") {
        Some(eol) => (
            String::from_utf8_lossy(&text[..eol])
                .trim_end_matches('\r')
                .to_string(),
            &text[eol + 1..],
        ),
        None => (String::from_utf8_lossy(text).to_string(), &[]),
    }
}

/// Header lines up to the first empty line, and the body after it.
fn headers_and_body(mut text: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut headers = Vec::new();
    while !text.is_empty() {
        let (line, rest) = split_line(text);
        text = rest;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    (headers, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_the_multipart_format() {
        let requests = vec![
            PartRequest {
                content_id: Some("1".into()),
                method: "PATCH".into(),
                url: "A_Set(Key='1')".into(),
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: br#"{"Key":"1","Qty":5}"#.to_vec(),
            },
            PartRequest {
                content_id: Some("2".into()),
                method: "PATCH".into(),
                url: "A_Set(Key='2')".into(),
                headers: vec![],
                body: b"{}\r\n--not-a-boundary".to_vec(),
            },
        ];
        // Read back by a MIME parser nobody here wrote: each part is an application/http
        // message with its request line, headers and the body byte for byte.
        let mut message = b"Content-Type: multipart/mixed; boundary=batch_x\r\n\r\n".to_vec();
        message.extend_from_slice(&encode_requests("batch_x", &requests));
        let parsed = mailparse::parse_mail(&message).unwrap();
        assert_eq!(parsed.subparts.len(), 2);
        for (part, request) in parsed.subparts.iter().zip(&requests) {
            assert_eq!(part.ctype.mimetype, "application/http");
            let raw = part.get_body_raw().unwrap();
            let head = format!("{} {} HTTP/1.1\r\n", request.method, request.url);
            assert!(raw.starts_with(head.as_bytes()));
            assert!(raw.ends_with(&request.body));
        }
    }

    #[test]
    fn responses_are_read_with_lf_lines_change_sets_and_a_preamble() {
        let body = "preamble\n--b\nContent-Type: application/http\nContent-ID: 1\n\nHTTP/1.1 204 No Content\nOData-Version: 4.0\n\n\n--b\nContent-Type: multipart/mixed; boundary=cs\n\n--cs\nContent-Type: application/http\n\nHTTP/1.1 400 Bad Request\nContent-Type: application/json\n\n{\"error\":{\"message\":\"no\"}}\n--cs--\n\n--b--\n";
        let responses =
            decode_responses("multipart/mixed;boundary=\"b\"", body.as_bytes()).unwrap();
        assert_eq!(responses.len(), 2);
        assert_eq!(
            (responses[0].content_id.as_deref(), responses[0].status),
            (Some("1"), 204)
        );
        assert_eq!(responses[1].status, 400);
        assert_eq!(responses[1].body, br#"{"error":{"message":"no"}}"#);
        assert!(decode_responses("application/json", b"{}").is_err());
        assert!(
            decode_responses(
                "multipart/mixed; boundary=b",
                b"--b\r\n\r\nHTTP/1.1 200 OK\r\n"
            )
            .is_err()
        );
    }

    /// A target answering with multiparts nested a thousand deep (or a flood of parts) is
    /// refused quickly, with a reason, instead of overflowing the stack.
    #[test]
    fn a_nested_or_flooding_batch_response_is_refused_quickly() {
        let depth = 20_000;
        let mut body = String::new();
        for level in 0..depth {
            body.push_str(&format!(
                "--b{level}x\r\nContent-Type: multipart/mixed; boundary=b{}x\r\n\r\n",
                level + 1
            ));
        }
        for level in (0..depth).rev() {
            body.push_str(&format!("\r\n--b{level}x--\r\n"));
        }
        assert!(body.len() > 700_000);
        let started = std::time::Instant::now();
        let refused = decode_responses("multipart/mixed; boundary=b0x", body.as_bytes());
        let error = refused.unwrap_err();
        assert!(error.contains("deeper than"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Within the limit, a change set still reads.
        let many: String = (0..MAX_PARTS + 5)
            .map(|_| "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .collect::<String>()
            + "--b--\r\n";
        let refused = decode_responses("multipart/mixed; boundary=b", many.as_bytes());
        assert!(refused.unwrap_err().contains("parts"));
    }
}
