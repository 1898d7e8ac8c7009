use std::borrow::Cow;

use crate::{normalize_in_place, Error, Metric, Result};

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

/// Refuses work on an index created with dimension 0.
pub(crate) fn require_dimension(dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(Error::InvalidArgument(
            "the index was created with dimension 0".into(),
        ));
    }
    Ok(())
}

/// Validates a whole upsert batch before anything changes and returns the vectors in the
/// form they are stored in (normalised for cosine; borrowed otherwise).
pub(crate) fn prepare_batch<'a>(
    dim: usize,
    metric: Metric,
    ids: &[u64],
    vectors: &'a [f32],
) -> Result<Cow<'a, [f32]>> {
    require_dimension(dim)?;
    let expected_len = ids.len().checked_mul(dim);
    if expected_len != Some(vectors.len()) {
        return Err(Error::DimensionMismatch {
            expected: expected_len.unwrap_or(usize::MAX),
            actual: vectors.len(),
        });
    }
    if let Some(position) = vectors.iter().position(|value| !value.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "vector for id {} has a non-finite component",
            ids[position / dim]
        )));
    }
    if metric != Metric::Cosine {
        return Ok(Cow::Borrowed(vectors));
    }
    let mut copy = vectors.to_vec();
    for (row, id) in copy.chunks_exact_mut(dim).zip(ids) {
        if !normalize_in_place(row) {
            return Err(Error::InvalidArgument(format!(
                "vector for id {id} is the zero vector, which has no cosine direction"
            )));
        }
    }
    Ok(Cow::Owned(copy))
}

/// Checks a query and writes it into `out` in the form it is scored in (normalised for
/// cosine).
pub(crate) fn prepare_query(
    dim: usize,
    metric: Metric,
    query: &[f32],
    out: &mut Vec<f32>,
) -> Result<()> {
    require_dimension(dim)?;
    if query.len() != dim {
        return Err(Error::DimensionMismatch {
            expected: dim,
            actual: query.len(),
        });
    }
    if let Some(position) = query.iter().position(|value| !value.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "query component {position} is not finite"
        )));
    }
    out.clear();
    out.extend_from_slice(query);
    if metric == Metric::Cosine && !normalize_in_place(out) {
        return Err(Error::InvalidArgument(
            "a cosine query must not be the zero vector".into(),
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
