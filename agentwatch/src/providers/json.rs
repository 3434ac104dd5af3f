//! JSON helpers every provider uses: one body or event as an object, token counts.
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `data` as a JSON object of type `T`; `None` for anything else (an array, a bare value,
/// malformed or truncated JSON), without building a value first.
pub(crate) fn object<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(data).ok()
}

/// Reads a token count: a non-negative integer (a float with no fraction is tolerated) below
/// 10^15. Larger values are treated as absent: no call comes near, and the sums made of counts
/// (Anthropic input + cache, totals) must not overflow.
pub(crate) fn count(obj: &Value, key: &str) -> Option<u64> {
    as_count(obj.get(key)?)
}

/// A token count value (see [`count`]).
pub(crate) fn as_count(v: &Value) -> Option<u64> {
    v.as_u64()
        .filter(|n| *n < 1_000_000_000_000_000)
        .or_else(|| {
            v.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e15)
                .map(|f| f as u64)
        })
}
