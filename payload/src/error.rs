use thiserror::Error;

/// What is wrong with a filter or a payload index request, naming where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct FilterError {
    /// Where in the filter, `filter.must[1].range`; or the field of a request.
    pub path: String,
    pub message: String,
}

impl FilterError {
    pub fn at(path: &str, message: impl Into<String>) -> FilterError {
        FilterError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, FilterError>;
