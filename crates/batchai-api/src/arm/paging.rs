//! Paging of list results: `maxresults` is the page size, `$skiptoken` the last key of the
//! previous page. nextLink is absolute and carries every query parameter, since clients follow
//! it verbatim; the last page has none (an empty string would make clients loop).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use batchai_core::ApiError;
use serde_json::{Value, json};

use super::Ctx;

pub const SKIP_TOKEN: &str = "$skiptoken";

/// Page size and the key to continue after.
pub struct Page {
    pub size: i64,
    pub after: Option<String>,
}

pub fn page(ctx: &Ctx) -> Result<Page, ApiError> {
    let size = match ctx.param("maxresults") {
        None => 1000,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid("maxresults", format!("maxresults must be 1 to 1000, got '{raw}'")))?,
    };
    let after = match ctx.param(SKIP_TOKEN) {
        None => None,
        Some(t) => Some(
            URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::invalid(SKIP_TOKEN, "the continuation token is malformed"))?,
        ),
    };
    Ok(Page { size, after })
}

/// Builds `{"value": items, "nextLink"?}`. `last_key` is the key of the last item when a
/// further page exists.
pub fn list_body(ctx: &Ctx, items: Vec<Value>, size: i64, last_key: Option<&str>) -> Value {
    let mut body = json!({ "value": items });
    if let Some(last) = last_key {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &ctx.query {
            if !k.eq_ignore_ascii_case(SKIP_TOKEN) && !k.eq_ignore_ascii_case("maxresults") {
                q.append_pair(k, v);
            }
        }
        q.append_pair("maxresults", &size.to_string());
        q.append_pair(SKIP_TOKEN, &URL_SAFE_NO_PAD.encode(last));
        body["nextLink"] = format!("{}{}?{}", ctx.base, ctx.path, q.finish()).into();
    }
    body
}
