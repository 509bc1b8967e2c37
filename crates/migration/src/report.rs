//! [`error_report`]: an error with its chain of causes, as operators see it.

/// `e`'s message followed by each of its causes (`a: b: c`), for operators and logs.
pub fn error_report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
