use crate::{Error, Metric, Result};

/// Checks that a vector can be stored in or searched against an index of `dim` dimensions
/// under `metric`: right length, every component finite, and for cosine a non-zero norm
/// (a zero vector has no direction). Services call this on every vector of a request
/// before anything is written, so a bad batch is rejected whole.
pub fn validate_vector(vector: &[f32], dim: usize, metric: Metric) -> Result<()> {
    if vector.len() != dim {
        return Err(Error::DimensionMismatch {
            expected: dim,
            actual: vector.len(),
        });
    }
    if let Some(position) = vector.iter().position(|value| !value.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "component {position} is {} (NaN and infinite values are not allowed)",
            vector[position]
        )));
    }
    if metric == Metric::Cosine && vector.iter().all(|value| *value == 0.0) {
        return Err(Error::InvalidArgument(
            "the zero vector has no direction, so it cannot be used with the cosine metric".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_length_nan_infinity_and_cosine_zero() {
        assert!(validate_vector(&[1.0, 2.0], 2, Metric::L2).is_ok());
        assert!(matches!(
            validate_vector(&[1.0], 2, Metric::L2),
            Err(Error::DimensionMismatch {
                expected: 2,
                actual: 1
            })
        ));
        assert!(matches!(
            validate_vector(&[1.0, f32::NAN], 2, Metric::L2),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            validate_vector(&[f32::INFINITY, 0.0], 2, Metric::InnerProduct),
            Err(Error::InvalidArgument(_))
        ));
        assert!(validate_vector(&[0.0, 0.0], 2, Metric::L2).is_ok());
        assert!(matches!(
            validate_vector(&[0.0, 0.0], 2, Metric::Cosine),
            Err(Error::InvalidArgument(_))
        ));
    }
}
