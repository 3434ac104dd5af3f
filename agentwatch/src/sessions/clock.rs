//! Boot clock → wall clock.
//!
//! Kernel events carry `CLOCK_BOOTTIME` nanoseconds (they keep counting across suspend and are
//! never stepped). Wall time = boot time + (REALTIME − BOOTTIME), the offset read once with
//! `clock_gettime`; call [`WallClock::refresh`] now and then to follow NTP steps.
//!
//! Timestamps are written as RFC 3339 UTC with exactly nine fractional digits
//! (`2025-01-02T03:04:05.123456789Z`): fixed width, so they sort as strings.

use time::OffsetDateTime;
use time::macros::format_description;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// REALTIME − BOOTTIME, nanoseconds.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> Option<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
}

/// `CLOCK_BOOTTIME` now, in nanoseconds (0 if unavailable).
pub fn boot_now_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

impl WallClock {
    /// Reads REALTIME and BOOTTIME now.
    pub fn from_system() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME).unwrap_or(0);
        let real = clock_ns(libc::CLOCK_REALTIME).unwrap_or(0);
        Self {
            offset_ns: real - boot,
        }
    }

    /// A fixed offset (tests, replays).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// Re-reads the offset (after an NTP step).
    pub fn refresh(&mut self) {
        *self = Self::from_system();
    }

    /// Unix-epoch nanoseconds of a boot-clock instant.
    pub fn unix_ns(&self, boot_ns: u64) -> i128 {
        boot_ns as i128 + self.offset_ns
    }

    /// RFC 3339 UTC, nanoseconds.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        format_unix_ns(self.unix_ns(boot_ns))
    }
}

/// Unix-epoch nanoseconds → `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`. Out-of-range instants are
/// clamped to the epoch (never panics).
pub fn format_unix_ns(unix_ns: i128) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
    OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000000000Z".to_string())
}

/// RFC 3339 → Unix-epoch nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_clock_formats_fixed_width_utc() {
        let c = WallClock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.rfc3339(0), "2023-11-14T22:13:20.000000000Z");
        assert_eq!(c.rfc3339(1_500_000_042), "2023-11-14T22:13:21.500000042Z");
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:21.500000042Z"),
            Some(c.unix_ns(1_500_000_042))
        );
        assert_eq!(format_unix_ns(i128::MAX), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn sessions_clock_system_offset_is_plausible() {
        let c = WallClock::from_system();
        let now = c.unix_ns(boot_now_ns());
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((now - sys).abs() < 1_000_000_000, "{now} vs {sys}");
    }
}
