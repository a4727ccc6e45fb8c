//! Log levels, as DESIGN.md defines them.

use crate::proto::LogLevel;

/// How important an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// A state change (created, started, deleted, ...).
    Audit,
    /// An event worth knowing.
    Info,
    /// Degraded operation or a retry.
    Warn,
    /// A failure.
    Error,
    /// Diagnostics.
    Debug,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Audit,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Debug,
    ];

    /// The stored (and wire) number of the level.
    pub fn code(self) -> i32 {
        self.to_proto() as i32
    }

    pub fn to_proto(self) -> LogLevel {
        match self {
            Level::Audit => LogLevel::Audit,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
            Level::Debug => LogLevel::Debug,
        }
    }

    /// The level for a wire number; `None` for unspecified or unknown values.
    pub fn from_code(code: i32) -> Option<Level> {
        match LogLevel::try_from(code).ok()? {
            LogLevel::Unspecified => None,
            LogLevel::Audit => Some(Level::Audit),
            LogLevel::Info => Some(Level::Info),
            LogLevel::Warn => Some(Level::Warn),
            LogLevel::Error => Some(Level::Error),
            LogLevel::Debug => Some(Level::Debug),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Audit => "AUDIT",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Debug => "DEBUG",
        }
    }

    /// Parses `audit`, `INFO`, ... (case-insensitive).
    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(text))
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_through_their_codes_and_names() {
        for level in Level::ALL {
            assert_eq!(Level::from_code(level.code()), Some(level));
            assert_eq!(Level::parse(&level.as_str().to_lowercase()), Some(level));
        }
        assert_eq!(Level::from_code(0), None);
        assert_eq!(Level::from_code(42), None);
        assert_eq!(Level::parse("verbose"), None);
    }
}
