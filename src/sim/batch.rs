//! The simulator's own reading and writing of OData `$batch` bodies (OData v4.01 Part 1,
//! 11.7.7: `multipart/mixed` of `application/http` parts, change sets nested one level), on a
//! MIME parser (mailparse) and an HTTP message parser (httparse) that nobody here wrote. It
//! shares nothing with the worker's batch codec, so a bug in one is not mirrored in the other.

use mailparse::MailHeaderMap;

/// One request of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRequest {
    pub content_id: Option<String>,
    pub method: String,
    /// The request target as written, relative to the service root.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl BatchRequest {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// One response of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchResponse {
    pub content_id: Option<String>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl BatchResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The requests of a `$batch` body, change sets flattened in order.
pub fn parse_requests(content_type: &str, body: &[u8]) -> Result<Vec<BatchRequest>, String> {
    let mut message = format!("Content-Type: {content_type}\r\n\r\n").into_bytes();
    message.extend_from_slice(body);
    let batch = mailparse::parse_mail(&message).map_err(|e| format!("not a MIME body: {e}"))?;
    if !batch.ctype.mimetype.eq_ignore_ascii_case("multipart/mixed") {
        return Err(format!(
            "a $batch body is multipart/mixed, not {}",
            batch.ctype.mimetype
        ));
    }
    let mut requests = Vec::new();
    for part in &batch.subparts {
        if part.ctype.mimetype.eq_ignore_ascii_case("multipart/mixed") {
            for inner in &part.subparts {
                requests.push(request_of(inner)?);
            }
        } else {
            requests.push(request_of(part)?);
        }
    }
    Ok(requests)
}

fn request_of(part: &mailparse::ParsedMail) -> Result<BatchRequest, String> {
    if !part.ctype.mimetype.eq_ignore_ascii_case("application/http") {
        return Err(format!(
            "a batch part is application/http, not {}",
            part.ctype.mimetype
        ));
    }
    let raw = part
        .get_body_raw()
        .map_err(|e| format!("unreadable batch part: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = request
        .parse(&raw)
        .map_err(|e| format!("batch part is no HTTP request: {e}"))?
    else {
        return Err("batch part ends inside its HTTP headers".into());
    };
    Ok(BatchRequest {
        content_id: part.get_headers().get_first_value("Content-ID"),
        method: request.method.unwrap_or_default().to_string(),
        url: request.path.unwrap_or_default().to_string(),
        headers: request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: raw[head..].to_vec(),
    })
}

/// A `multipart/mixed` batch response body with `boundary`.
pub fn write_responses(boundary: &str, responses: &[BatchResponse]) -> Vec<u8> {
    let mut out = Vec::new();
    for response in responses {
        let reason = http::StatusCode::from_u16(response.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Status");
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n")
                .as_bytes(),
        );
        if let Some(id) = &response.content_id {
            out.extend_from_slice(format!("Content-ID: {id}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("\r\nHTTP/1.1 {} {reason}\r\n", response.status).as_bytes());
        for (name, value) in &response.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&response.body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_and_change_sets_as_odata_clients_send_them() {
        let body = "--batch_1\r\n\
            Content-Type: application/http\r\n\
            Content-Transfer-Encoding: binary\r\n\
            Content-ID: 1\r\n\
            \r\n\
            PATCH Set(Key='A') HTTP/1.1\r\n\
            Content-Type: application/json\r\n\
            If-Match: W/\"3\"\r\n\
            \r\n\
            {\"qty\":1}\r\n\
            --batch_1\r\n\
            Content-Type: multipart/mixed; boundary=changeset_2\r\n\
            \r\n\
            --changeset_2\r\n\
            Content-Type: application/http\r\n\
            Content-ID: 2\r\n\
            \r\n\
            POST Set HTTP/1.1\r\n\
            \r\n\
            {}\r\n\
            --changeset_2--\r\n\
            --batch_1--\r\n";
        let requests =
            parse_requests("multipart/mixed; boundary=batch_1", body.as_bytes()).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, "PATCH");
        assert_eq!(requests[0].url, "Set(Key='A')");
        assert_eq!(requests[0].content_id.as_deref(), Some("1"));
        assert_eq!(requests[0].header("if-match"), Some("W/\"3\""));
        assert_eq!(requests[0].body, b"{\"qty\":1}");
        assert_eq!(
            (requests[1].method.as_str(), requests[1].url.as_str()),
            ("POST", "Set")
        );
        assert!(parse_requests("application/json", b"{}").is_err());
    }

    #[test]
    fn writes_responses_that_a_mime_parser_reads_back() {
        let responses = [
            BatchResponse {
                content_id: Some("1".into()),
                status: 204,
                headers: vec![],
                body: vec![],
            },
            BatchResponse {
                content_id: None,
                status: 412,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: b"{}".to_vec(),
            },
        ];
        let mut message = b"Content-Type: multipart/mixed; boundary=r\r\n\r\n".to_vec();
        message.extend_from_slice(&write_responses("r", &responses));
        let parsed = mailparse::parse_mail(&message).unwrap();
        let lines: Vec<String> = parsed
            .subparts
            .iter()
            .map(|p| String::from_utf8(p.get_body_raw().unwrap()).unwrap())
            .collect();
        assert!(
            lines[0].starts_with("HTTP/1.1 204 No Content\r\n"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("HTTP/1.1 412 Precondition Failed\r\n"),
            "{lines:?}"
        );
        assert!(lines[1].ends_with("\r\n\r\n{}"), "{lines:?}");
    }
}
