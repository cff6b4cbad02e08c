//! Paging of the list endpoints: `limit` and `offset` parsed strictly, and the arithmetic
//! done so that no `offset` can overflow (an offset past the end is an empty last page).

use super::ApiError;

/// Items listed when no `limit` is given.
pub(super) const DEFAULT_LIMIT: usize = 50;
/// The most items one request may list.
pub(super) const MAX_LIMIT: usize = 1_000;

/// A validated page: `limit` items after skipping `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Page {
    /// At most this many, from 1 to the endpoint's maximum.
    pub(super) limit: usize,
    /// Skip this many; any `usize`.
    pub(super) offset: usize,
}

impl Page {
    /// Parses an optional `limit` (1 to `max_limit`, default [`DEFAULT_LIMIT`]) and
    /// `offset` (default 0).
    pub(super) fn parse(
        limit: Option<&str>,
        offset: Option<&str>,
        max_limit: usize,
    ) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max_limit).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit `{s}`: expected a whole number from 1 to {max_limit}"
                    ))
                })?,
        };
        let offset = match offset {
            None => 0,
            Some(s) => s.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!("offset `{s}`: expected a whole number from 0"))
            })?,
        };
        Ok(Self { limit, offset })
    }

    /// The index just past this page; `None` when it lies beyond any index there can be
    /// (the page is then empty).
    pub(super) fn end(self) -> Option<usize> {
        self.offset.checked_add(self.limit)
    }

    /// The `offset` of the next page when `total` items match in all, if any are left.
    pub(super) fn next_offset(self, total: usize) -> Option<usize> {
        self.end().filter(|&end| end < total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (limit, offset, total) → next_offset.
    #[test]
    fn next_offset_never_overflows() {
        let check = |limit: usize, offset: usize, total: usize, want: Option<usize>| {
            let page = Page { limit, offset };
            assert_eq!(page.next_offset(total), want, "{page:?} of {total}");
        };
        check(2, 0, 5, Some(2));
        check(2, 3, 5, None);
        check(2, 2, 5, Some(4));
        check(50, usize::MAX, 5, None);
        check(1, usize::MAX - 1, usize::MAX, None);
        check(1, usize::MAX - 2, usize::MAX, Some(usize::MAX - 1));
    }

    #[test]
    fn bad_limits_and_offsets_are_named() {
        for (limit, offset, what) in [
            (Some("0"), None, "limit `0`"),
            (Some("1001"), None, "limit `1001`"),
            (None, Some("-1"), "offset `-1`"),
            (
                None,
                Some("18446744073709551616"),
                "offset `18446744073709551616`",
            ),
        ] {
            let e = Page::parse(limit, offset, MAX_LIMIT).expect_err(what);
            assert!(e.message.contains(what), "{}", e.message);
        }
        assert_eq!(
            Page::parse(None, Some("18446744073709551615"), MAX_LIMIT).ok(),
            Some(Page {
                limit: DEFAULT_LIMIT,
                offset: usize::MAX
            })
        );
    }
}
