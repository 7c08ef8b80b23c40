//! The XML bodies of listings, as the service writes them.

use std::fmt::Write;
use std::time::SystemTime;

use crate::error::xml_escape;
use crate::shares::{Entry, Page, Props};

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The file-time form of the `x-ms-file-*` headers: ISO 8601 with seven decimals.
pub fn file_time(t: SystemTime) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from(t);
    // chrono has no seven-digit fraction: Windows file times count 100 ns ticks.
    format!("{}.{:07}Z", t.format("%Y-%m-%dT%H:%M:%S"), t.timestamp_subsec_nanos() / 100)
}

/// What a listing request asked for, echoed in the result.
pub struct Listing<'a> {
    pub service_endpoint: &'a str,
    pub prefix: &'a str,
    pub marker: &'a str,
    pub max_results: Option<usize>,
}

fn head(out: &mut String, l: &Listing<'_>, attrs: &str) {
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
    let _ = write!(out, "<EnumerationResults ServiceEndpoint=\"{}\"{attrs}>", xml_escape(l.service_endpoint));
    if !l.prefix.is_empty() {
        let _ = write!(out, "<Prefix>{}</Prefix>", xml_escape(l.prefix));
    }
    if !l.marker.is_empty() {
        let _ = write!(out, "<Marker>{}</Marker>", xml_escape(l.marker));
    }
    if let Some(m) = l.max_results {
        let _ = write!(out, "<MaxResults>{m}</MaxResults>");
    }
}

fn tail(out: &mut String, page: &Page) {
    match &page.next_marker {
        Some(m) => {
            let _ = write!(out, "<NextMarker>{}</NextMarker>", xml_escape(m));
        }
        None => out.push_str("<NextMarker />"),
    }
    out.push_str("</EnumerationResults>");
}

pub fn shares(l: &Listing<'_>, page: &Page) -> String {
    let mut out = String::new();
    head(&mut out, l, "");
    out.push_str("<Shares>");
    for Entry { name, props } in &page.entries {
        let _ = write!(
            out,
            "<Share><Name>{}</Name><Properties><Last-Modified>{}</Last-Modified><Etag>{}</Etag>\
             <Quota>{}</Quota></Properties></Share>",
            xml_escape(name),
            http_date(props.modified),
            xml_escape(&props.etag()),
            crate::SHARE_QUOTA_GIB,
        );
    }
    out.push_str("</Shares>");
    tail(&mut out, page);
    out
}

fn times(out: &mut String, p: &Props) {
    let _ = write!(
        out,
        "<CreationTime>{}</CreationTime><LastAccessTime>{m}</LastAccessTime><LastWriteTime>{m}</LastWriteTime>\
         <ChangeTime>{m}</ChangeTime><Last-Modified>{}</Last-Modified><Etag>{}</Etag>",
        file_time(p.created),
        http_date(p.modified),
        xml_escape(&p.etag()),
        m = file_time(p.modified),
    );
}

pub fn directory(l: &Listing<'_>, share: &str, path: &str, dir: &Props, page: &Page) -> String {
    let mut out = String::new();
    let attrs = format!(" ShareName=\"{}\" DirectoryPath=\"{}\"", xml_escape(share), xml_escape(path));
    head(&mut out, l, &attrs);
    let _ = write!(out, "<DirectoryId>{}</DirectoryId><Entries>", dir.id);
    for Entry { name, props } in &page.entries {
        let (tag, attributes) = if props.is_dir { ("Directory", "Directory") } else { ("File", "Archive") };
        let _ = write!(out, "<{tag}><FileId>{}</FileId><Name>{}</Name><Properties>", props.id, xml_escape(name));
        if !props.is_dir {
            let _ = write!(out, "<Content-Length>{}</Content-Length>", props.len);
        }
        times(&mut out, props);
        let _ = write!(
            out,
            "</Properties><Attributes>{attributes}</Attributes><PermissionKey>{}</PermissionKey></{tag}>",
            crate::PERMISSION_KEY
        );
    }
    out.push_str("</Entries>");
    tail(&mut out, page);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_in_both_forms() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_528_332_874_892);
        assert_eq!(http_date(t), "Thu, 07 Jun 2018 00:54:34 GMT");
        assert_eq!(file_time(t), "2018-06-07T00:54:34.8920000Z");
    }

    #[test]
    fn names_are_escaped_and_the_marker_continues() {
        let props =
            Props { is_dir: false, len: 3, modified: SystemTime::UNIX_EPOCH, created: SystemTime::UNIX_EPOCH, id: 9 };
        let page = Page { entries: vec![Entry { name: "a<&>b".into(), props }], next_marker: Some("c".into()) };
        let l = Listing { service_endpoint: "http://h/acct/", prefix: "", marker: "", max_results: Some(1) };
        let xml = directory(&l, "s", "d", &page.entries[0].props.clone(), &page);
        assert!(xml.contains(
            "<File><FileId>9</FileId><Name>a&lt;&amp;&gt;b</Name><Properties><Content-Length>3</Content-Length>"
        ));
        assert!(xml.contains("<MaxResults>1</MaxResults>"));
        assert!(xml.ends_with("<NextMarker>c</NextMarker></EnumerationResults>"));
    }
}
