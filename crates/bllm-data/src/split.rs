//! Database / query / training splits.

use bllm_codes::FloatMatrix;

use crate::{DataError, Result};

/// Rows for retrieval evaluation: queries search the database; encoders train on `train`.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Database rows.
    pub db: FloatMatrix,
    /// Query rows.
    pub queries: FloatMatrix,
    /// Training rows (the database unless given separately).
    pub train: FloatMatrix,
}

impl Split {
    /// The first `queries` rows are the queries, the rest the database (and the training set).
    pub fn first_rows(x: &FloatMatrix, queries: usize) -> Result<Self> {
        if queries == 0 || queries >= x.rows() {
            return Err(DataError::InvalidArgument(format!(
                "queries = {queries} must be in 1..{} (the set has {} rows)",
                x.rows(),
                x.rows()
            )));
        }
        let db = x.slice_rows(queries, x.rows())?;
        Ok(Self {
            queries: x.slice_rows(0, queries)?,
            train: db.clone(),
            db,
        })
    }

    /// Separate database and query sets (training on the database).
    pub fn separate(db: FloatMatrix, queries: FloatMatrix) -> Result<Self> {
        if db.cols() != queries.cols() {
            return Err(DataError::InvalidArgument(format!(
                "database has dimension {}, queries {}",
                db.cols(),
                queries.cols()
            )));
        }
        Ok(Self {
            train: db.clone(),
            db,
            queries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rows_are_queries() {
        let x = FloatMatrix::new(4, 1, vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        let s = Split::first_rows(&x, 1).unwrap();
        assert_eq!(s.queries.as_slice(), &[0.0]);
        assert_eq!(s.db.as_slice(), &[1.0, 2.0, 3.0]);
        assert_eq!(s.train, s.db);
        assert!(Split::first_rows(&x, 4).is_err() && Split::first_rows(&x, 0).is_err());
        assert!(
            Split::separate(x.clone(), FloatMatrix::new(1, 2, vec![0.0, 0.0]).unwrap()).is_err()
        );
    }
}
