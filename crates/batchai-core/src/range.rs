//! HTTP byte ranges (`Range: bytes=…`, also Azure Storage's `x-ms-range`), as servers of
//! files answer them: one range or the whole file.

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// No range, or one we ignore (malformed or several ranges): the whole file, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// Nothing to send, 416; includes `bytes=<len>-`: the stream command polls past the end of a
    /// growing file and must see a non-2xx while nothing new has been written.
    Unsatisfiable,
}

pub fn parse_range(header: Option<&str>, len: u64) -> Span {
    let Some(spec) = header
        .map(str::trim)
        .and_then(|h| h.split_once('='))
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, spec)| spec.trim())
    else {
        return Span::Full;
    };
    if spec.contains(',') {
        return Span::Full;
    }
    let Some((first, last)) = spec.split_once('-') else { return Span::Full };
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => Span::Full,
            Some(0) => Span::Unsatisfiable,
            Some(_) if len == 0 => Span::Unsatisfiable,
            Some(n) => Span::Part { start: len.saturating_sub(n), end: len - 1 },
        },
        (start, "") => match number(start) {
            None => Span::Full,
            Some(s) if s >= len => Span::Unsatisfiable,
            Some(s) => Span::Part { start: s, end: len - 1 },
        },
        (start, end) => match (number(start), number(end)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    Span::Unsatisfiable
                } else {
                    Span::Part { start: s, end: e.min(len - 1) }
                }
            }
            _ => Span::Full,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use Span::*;
        let r = |h: &str, len| parse_range(Some(h), len);
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(r("bytes=10-19", 100), Part { start: 10, end: 19 });
        assert_eq!(r("bytes=10-1000", 100), Part { start: 10, end: 99 }, "end clamps to the file");
        assert_eq!(r("bytes=90-", 100), Part { start: 90, end: 99 });
        assert_eq!(r("bytes=-10", 100), Part { start: 90, end: 99 });
        assert_eq!(r("bytes=-1000", 100), Part { start: 0, end: 99 });
        assert_eq!(r("Bytes = 0-0", 100), Part { start: 0, end: 0 });
        assert_eq!(r("bytes=100-", 100), Unsatisfiable, "empty range at EOF");
        assert_eq!(r("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable, "nothing in an empty file");
        assert_eq!(r("bytes=-0", 100), Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), Unsatisfiable);
        for ignored in ["bytes=0-1,5-6", "bytes=5-1", "bytes=a-b", "bytes=-", "bytes=1", "items=0-1", "bytes=+1-2", ""]
        {
            assert_eq!(r(ignored, 100), Full, "{ignored}");
        }
    }
}
