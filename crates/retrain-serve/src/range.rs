//! `Range` and `If-Range` (RFC 9110 §14), for one byte range.

/// How a `Range` header asks a GET to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The whole file, 200: no usable range (another unit, bad syntax, several ranges).
    Whole,
    /// Bytes `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// No byte of the file is in the range, 416.
    Unsatisfiable,
}

/// Answers the `Range` header value `range` for a file of `total` bytes.
pub(crate) fn answer(range: &str, total: u64) -> Answer {
    let Some((unit, set)) = range.trim().split_once('=') else {
        return Answer::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Answer::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Answer::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Some(n) = number(last) else {
            return Answer::Whole;
        };
        if n == 0 || total == 0 {
            return Answer::Unsatisfiable;
        }
        return Answer::Part {
            start: total.saturating_sub(n),
            end: total - 1,
        };
    }
    let Some(start) = number(first) else {
        return Answer::Whole;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match number(last) {
            Some(end) if end >= start => end,
            _ => return Answer::Whole,
        }
    };
    if start >= total {
        return Answer::Unsatisfiable;
    }
    Answer::Part {
        start,
        end: end.min(total - 1),
    }
}

/// A non-empty run of ASCII digits; values past `u64::MAX` saturate (they are past any file's end).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// Whether an `If-Range` value still names the file: an entity tag equal (strongly) to `etag`, or
/// a date equal to `last_modified`. When it does not, the range is ignored and the whole file sent.
pub(crate) fn if_range_matches(value: &str, etag: &str, last_modified: &str) -> bool {
    let value = value.trim();
    if value.starts_with("W/") {
        false
    } else if value.starts_with('"') {
        !etag.starts_with("W/") && value == etag
    } else {
        value == last_modified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> Answer {
        Answer::Part { start, end }
    }

    #[test]
    fn answers_each_range_form() {
        assert_eq!(answer("bytes=0-9", 100), part(0, 9));
        assert_eq!(answer("bytes=10-", 100), part(10, 99));
        assert_eq!(answer("bytes=-10", 100), part(90, 99));
        assert_eq!(answer("bytes=-1000", 100), part(0, 99));
        assert_eq!(answer("bytes=90-1000", 100), part(90, 99));
        assert_eq!(answer("BYTES = 5-5", 100), part(5, 5));
        assert_eq!(answer("bytes=0-99999999999999999999999", 100), part(0, 99));
        assert_eq!(answer("bytes=-99999999999999999999999", 100), part(0, 99));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(answer("bytes=100-", 100), Answer::Unsatisfiable);
        assert_eq!(answer("bytes=100-200", 100), Answer::Unsatisfiable);
        assert_eq!(answer("bytes=-0", 100), Answer::Unsatisfiable);
        assert_eq!(answer("bytes=0-", 0), Answer::Unsatisfiable);
        assert_eq!(answer("bytes=-5", 0), Answer::Unsatisfiable);
        assert_eq!(
            answer("bytes=99999999999999999999999-", 100),
            Answer::Unsatisfiable
        );
    }

    #[test]
    fn unusable_ranges_give_the_whole_file() {
        for range in [
            "",
            "bytes",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=0",
            "bytes=+1-2",
            "bytes=1--2",
        ] {
            assert_eq!(answer(range, 100), Answer::Whole, "{range:?}");
        }
    }

    #[test]
    fn if_range_compares_strong_tags_and_exact_dates() {
        let date = "Fri, 05 Jun 2009 00:00:00 GMT";
        assert!(if_range_matches("\"abc\"", "\"abc\"", date));
        assert!(!if_range_matches("\"abd\"", "\"abc\"", date));
        assert!(!if_range_matches("W/\"abc\"", "\"abc\"", date));
        assert!(!if_range_matches("\"abc\"", "W/\"abc\"", date));
        assert!(if_range_matches(date, "\"abc\"", date));
        assert!(!if_range_matches(
            "Sat, 06 Jun 2009 00:00:00 GMT",
            "\"abc\"",
            date
        ));
    }
}
